import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bearerMetadata, readTokenFile, requireBearerToken } from '../../src/api/auth.ts';

const TOKEN = '0123456789abcdef0123456789abcdef';

describe('the bearer token', () => {
  it('reads one token from its file, and refuses a missing, short or multi-word one naming the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lxcr-auth-'));
    writeFileSync(join(dir, 'good'), `${TOKEN}\n`);
    writeFileSync(join(dir, 'short'), 'abc\n');
    writeFileSync(join(dir, 'two'), `${TOKEN} ${TOKEN}\n`);
    expect(readTokenFile(join(dir, 'good'), '--token-file')).toBe(TOKEN);
    expect(() => readTokenFile(join(dir, 'short'), '--token-file')).toThrow(/--token-file .*short must hold one token of at least 16 characters/);
    expect(() => readTokenFile(join(dir, 'two'), '--token-file')).toThrow(/without spaces/);
    expect(() => readTokenFile(join(dir, 'missing'), '--token-file')).toThrow(/--token-file .*missing cannot be read/);
  });

  it('lets through only metadata carrying exactly the token', () => {
    const check = requireBearerToken(TOKEN);
    expect(() => check(bearerMetadata(TOKEN))).not.toThrow();
    expect(() => check(bearerMetadata(undefined))).toThrow(/requires a bearer token: send metadata "authorization: Bearer <token>"/);
    try {
      check(bearerMetadata(undefined));
    } catch (err) {
      expect((err as { code: string }).code).toBe('UNAUTHENTICATED');
    }
    expect(() => check(bearerMetadata(`${TOKEN}0`))).toThrow(/not this cluster's/);
    expect(() => check(bearerMetadata(TOKEN.slice(0, -1)))).toThrow(/not this cluster's/);
    const basic = bearerMetadata(undefined);
    basic.set('authorization', `Basic ${TOKEN}`);
    expect(() => check(basic)).toThrow(/requires a bearer token/);
  });
});
