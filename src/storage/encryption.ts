/**
 * Encryption at rest of chunk contents: AES-256-GCM over each chunk as stored (after compression), with a key read
 * from a file. Chunks stay addressed by the sha256 of their plaintext within their container, so deduplication
 * within a container keeps working; what that reveals is that equal chunks of one container are equal.
 * The key never leaves the agent: manifests and the chunk index carry only its key id.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { FailedPreconditionError, IntegrityError, InvalidArgumentError, errorMessage } from '../util/errors.ts';

export const KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** What encryption adds to a chunk as stored: its nonce and its tag. */
export const SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES;
/** Hex of 8 bytes. */
export const KEY_ID = /^[0-9a-f]{16}$/;
/** Written in the chunk index's codec column after the codec, for a chunk stored encrypted: `brotli+aes256gcm:<key id>`. */
const INDEX_MARK = '+aes256gcm:';

/** Chunks encrypted with a key this agent does not have: a configuration matter, not corruption. */
export class EncryptionKeyError extends FailedPreconditionError {}

/**
 * Seals and opens chunks with one key. The associated data binds each sealed chunk to its container and plaintext
 * hash, so a sealed chunk copied to another address does not open there (the sha256 check would catch it later
 * anyway; this names it as tampering).
 */
export class ChunkCipher {
  /** First 8 bytes (hex) of sha256("lxcr-key-id" || key): names the key without revealing it. */
  readonly keyId: string;
  private readonly key: Buffer;

  constructor(key: Buffer) {
    if (key.length !== KEY_BYTES) throw new InvalidArgumentError(`a chunk key is ${KEY_BYTES} bytes, got ${key.length}`);
    this.key = Buffer.from(key);
    this.keyId = keyIdOf(this.key);
  }

  /** nonce || ciphertext || tag. The nonce is random: 2^32 chunks per key keep GCM's collision odds below 2^-32. */
  seal(container: string, hash: string, data: Uint8Array): Buffer {
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.key, nonce);
    cipher.setAAD(associatedData(container, hash));
    return Buffer.concat([nonce, cipher.update(data), cipher.final(), cipher.getAuthTag()]);
  }

  /** The stored bytes back; an IntegrityError when the tag does not verify (tampered, truncated, or another key). */
  open(container: string, hash: string, sealed: Buffer): Buffer {
    if (sealed.length < SEAL_OVERHEAD) {
      throw new IntegrityError(`encrypted chunk is ${sealed.length} bytes, shorter than its nonce and tag (${SEAL_OVERHEAD})`);
    }
    const decipher = createDecipheriv('aes-256-gcm', this.key, sealed.subarray(0, NONCE_BYTES));
    decipher.setAAD(associatedData(container, hash));
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    try {
      return Buffer.concat([decipher.update(sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES)), decipher.final()]);
    } catch (err) {
      throw new IntegrityError(`encrypted chunk does not authenticate with key ${this.keyId} (tampered or corrupted)`, { cause: err });
    }
  }
}

function associatedData(container: string, hash: string): Buffer {
  return Buffer.from(`lxcr-chunk\0${container}\0${hash}`);
}

export function keyIdOf(key: Buffer): string {
  return createHash('sha256').update('lxcr-key-id').update(key).digest().subarray(0, 8).toString('hex');
}

/**
 * Reads a key file: 32 raw bytes, or the same as 64 hex digits or as base64 (e.g. `openssl rand -hex 32`), with
 * surrounding whitespace ignored. A file that group or others may read is refused: the key is the whole secret.
 */
export function readChunkKeyFile(path: string, option = 'encryption.keyFile'): ChunkCipher {
  let bytes: Buffer;
  let mode: number;
  try {
    mode = statSync(path).mode;
    bytes = readFileSync(path);
  } catch (err) {
    throw new InvalidArgumentError(`${option} ${path} cannot be read: ${errorMessage(err)}`, { cause: err });
  }
  if ((mode & 0o077) !== 0) {
    throw new InvalidArgumentError(
      `${option} ${path} may be read by group or others (mode ${(mode & 0o777).toString(8)}): chmod 600 it`,
    );
  }
  const key = parseKey(bytes);
  if (!key) {
    throw new InvalidArgumentError(
      `${option} ${path} must hold a ${KEY_BYTES}-byte key: raw, ${KEY_BYTES * 2} hex digits or base64 (e.g. from \`openssl rand -hex 32\`)`,
    );
  }
  return new ChunkCipher(key);
}

function parseKey(bytes: Buffer): Buffer | undefined {
  if (bytes.length === KEY_BYTES) return bytes;
  const text = bytes.toString('latin1').trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/]{43}=?$/.test(text)) {
    const decoded = Buffer.from(text, 'base64');
    if (decoded.length === KEY_BYTES) return decoded;
  }
  return undefined;
}

/** The chunk index's codec column for a chunk stored with `codec`, encrypted with `keyId` when given. */
export function indexCodec(codec: string, keyId: string | undefined): string {
  return keyId === undefined ? codec : `${codec}${INDEX_MARK}${keyId}`;
}

/** The inverse of indexCodec. */
export function parseIndexCodec(column: string): { codec: string; keyId?: string } {
  const at = column.indexOf(INDEX_MARK);
  return at < 0 ? { codec: column } : { codec: column.slice(0, at), keyId: column.slice(at + INDEX_MARK.length) };
}

/**
 * The stored bytes of a chunk that the manifest says are encrypted with `keyId` (or plain, without one), opened with
 * the agent's cipher. `context` names the container and version for the error when the agent lacks that key.
 */
export function openChunk(cipher: ChunkCipher | undefined, context: string, container: string, ref: { hash: string; keyId?: string }, stored: Buffer): Buffer {
  if (ref.keyId === undefined) return stored;
  requireKey(cipher, context, ref.keyId);
  return cipher.open(container, ref.hash, stored);
}

/** Throws EncryptionKeyError unless `cipher` is the key `keyId` names. */
export function requireKey(cipher: ChunkCipher | undefined, context: string, keyId: string): asserts cipher is ChunkCipher {
  if (cipher?.keyId === keyId) return;
  const have = cipher === undefined ? 'this agent has no encryption.keyFile' : `this agent's key is ${cipher.keyId}`;
  throw new EncryptionKeyError(`${context} is encrypted with key ${keyId}, but ${have}: configure that key to restore it`);
}
