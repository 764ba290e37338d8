import { createCipheriv } from 'node:crypto';

/**
 * Deterministic incompressible bytes: the AES-CTR keystream of a seed. Tests whose outcome depends on where
 * content-defined chunk boundaries fall use it instead of randomBytes, so every run sees the same boundaries.
 */
export function pseudoRandom(bytes: number, seed = 1): Buffer {
  return createCipheriv('aes-128-ctr', Buffer.alloc(16, seed), Buffer.alloc(16)).update(Buffer.alloc(bytes));
}
