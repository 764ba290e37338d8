import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { Agent, type AgentConfig } from '../../src/agent/agent.ts';
import { createLogger } from '../../src/util/log.ts';
import {
  ChunkCipher,
  EncryptionKeyError,
  SEAL_OVERHEAD,
  indexCodec,
  keyIdOf,
  openChunk,
  parseIndexCodec,
  readChunkKeyFile,
} from '../../src/storage/encryption.ts';
import { IntegrityError, InvalidArgumentError } from '../../src/util/errors.ts';

const scratch = mkdtempSync(join(tmpdir(), 'lxcr-key-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const hash = createHash('sha256').update('chunk').digest('hex');
const key = Buffer.alloc(32, 7);

function keyFile(name: string, content: string | Buffer, mode = 0o600): string {
  const path = join(scratch, name);
  writeFileSync(path, content);
  chmodSync(path, mode);
  return path;
}

describe('ChunkCipher', () => {
  const cipher = new ChunkCipher(key);

  it('round-trips a chunk, adding only nonce and tag, with a fresh nonce each time', () => {
    const data = randomBytes(100_000);
    const sealed = cipher.seal('c1', hash, data);
    expect(sealed.length).toBe(data.length + SEAL_OVERHEAD);
    expect(cipher.open('c1', hash, sealed)).toEqual(data);
    expect(cipher.seal('c1', hash, data).equals(sealed)).toBe(false);
    expect(cipher.open('c1', hash, cipher.seal('c1', hash, Buffer.alloc(0)))).toEqual(Buffer.alloc(0));
  });

  it('detects a flipped bit in nonce, ciphertext or tag, and truncation', () => {
    const sealed = cipher.seal('c1', hash, Buffer.from('some memory pages'));
    for (const at of [0, 11, 12, 20, sealed.length - 1]) {
      const bad = Buffer.from(sealed);
      bad[at]! ^= 1;
      expect(() => cipher.open('c1', hash, bad), `bit at ${at}`).toThrow(IntegrityError);
    }
    expect(() => cipher.open('c1', hash, sealed.subarray(0, sealed.length - 1))).toThrow(/does not authenticate/);
    expect(() => cipher.open('c1', hash, sealed.subarray(0, 10))).toThrow(/shorter than its nonce and tag/);
  });

  it('does not open a chunk moved to another container or hash, or with another key', () => {
    const sealed = cipher.seal('c1', hash, Buffer.from('x'));
    expect(() => cipher.open('c2', hash, sealed)).toThrow(IntegrityError);
    expect(() => cipher.open('c1', hash.replace(/^./, 'f'), sealed)).toThrow(IntegrityError);
    const other = new ChunkCipher(Buffer.alloc(32, 8));
    expect(() => other.open('c1', hash, sealed)).toThrow(`does not authenticate with key ${other.keyId}`);
  });

  it('names the key by a stable id that is not the key', () => {
    expect(cipher.keyId).toBe(keyIdOf(key));
    expect(cipher.keyId).toBe(createHash('sha256').update('lxcr-key-id').update(key).digest('hex').slice(0, 16));
    expect(cipher.keyId).toMatch(/^[0-9a-f]{16}$/);
    expect(new ChunkCipher(Buffer.alloc(32, 8)).keyId).not.toBe(cipher.keyId);
    expect(cipher.keyId).not.toContain(key.toString('hex').slice(0, 16));
    expect(() => new ChunkCipher(Buffer.alloc(16))).toThrow('a chunk key is 32 bytes, got 16');
  });

  it('openChunk passes clear chunks through and names the key an encrypted one needs', () => {
    const sealed = cipher.seal('c1', hash, Buffer.from('x'));
    expect(openChunk(undefined, 'c1 version 3', 'c1', { hash }, Buffer.from('plain'))).toEqual(Buffer.from('plain'));
    expect(openChunk(cipher, 'c1 version 3', 'c1', { hash, keyId: cipher.keyId }, sealed)).toEqual(Buffer.from('x'));
    expect(() => openChunk(undefined, 'c1 version 3', 'c1', { hash, keyId: cipher.keyId }, sealed)).toThrow(
      `c1 version 3 is encrypted with key ${cipher.keyId}, but this agent has no encryption.keyFile`,
    );
    const other = new ChunkCipher(Buffer.alloc(32, 8));
    expect(() => openChunk(other, 'c1 version 3', 'c1', { hash, keyId: cipher.keyId }, sealed)).toThrow(EncryptionKeyError);
    expect(() => openChunk(other, 'c1 version 3', 'c1', { hash, keyId: cipher.keyId }, sealed)).toThrow(`this agent's key is ${other.keyId}`);
  });

  it('records the key id in the index codec column and reads it back', () => {
    expect(indexCodec('brotli', undefined)).toBe('brotli');
    expect(parseIndexCodec('brotli')).toEqual({ codec: 'brotli' });
    expect(parseIndexCodec(indexCodec('none', cipher.keyId))).toEqual({ codec: 'none', keyId: cipher.keyId });
  });
});

describe('readChunkKeyFile', () => {
  it('reads a key as raw bytes, hex or base64, all the same key', () => {
    const ids = [
      readChunkKeyFile(keyFile('raw', key)).keyId,
      readChunkKeyFile(keyFile('hex', `${key.toString('hex')}\n`)).keyId,
      readChunkKeyFile(keyFile('b64', `  ${key.toString('base64')}\n`)).keyId,
    ];
    expect(ids).toEqual([keyIdOf(key), keyIdOf(key), keyIdOf(key)]);
  });

  it('names the file and what is wrong with it', () => {
    const missing = join(scratch, 'missing');
    expect(() => readChunkKeyFile(missing)).toThrow(`encryption.keyFile ${missing} cannot be read`);
    const short = keyFile('short', 'abcd');
    expect(() => readChunkKeyFile(short)).toThrow(`encryption.keyFile ${short} must hold a 32-byte key`);
    const long = keyFile('long', randomBytes(33));
    expect(() => readChunkKeyFile(long)).toThrow(InvalidArgumentError);
    const open = keyFile('open', key, 0o644);
    expect(() => readChunkKeyFile(open)).toThrow(`encryption.keyFile ${open} may be read by group or others (mode 644): chmod 600 it`);
    const group = keyFile('group', key, 0o640);
    expect(() => readChunkKeyFile(group)).toThrow(/mode 640/);
  });
});

describe('an agent with encryption.keyFile', () => {
  it('refuses to start on a bad key file, naming it, before it creates or connects anything', async () => {
    const open = keyFile('agent-open', key, 0o644);
    const stagingDir = join(scratch, 'staging');
    const config = {
      hostId: 'host1', lxcpath: join(scratch, 'lxc'), stagingDir, cassandra: { address: '127.0.0.1', jmxPort: 1 },
      grpc: { listen: '127.0.0.1:0', security: { insecure: true } }, encryption: { keyFile: open },
    } as unknown as AgentConfig;
    await expect(Agent.start(config, createLogger('test', 'error'))).rejects.toThrow(`encryption.keyFile ${open} may be read by group or others`);
    expect(existsSync(stagingDir)).toBe(false);
  });
});
