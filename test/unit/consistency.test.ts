import cassandra from 'cassandra-driver';
import { describe, expect, it } from 'vitest';
import { contentionBackoffMs, isPaxosTimeout } from '../../src/storage/consistency.ts';

const { responseErrorCodes, consistencies } = cassandra.types;

function responseError(code: number, fields: Record<string, unknown>): Error {
  return Object.assign(new cassandra.errors.ResponseError(code, 'server timeout'), fields);
}

describe('Paxos timeout classification', () => {
  it('treats a CAS write timeout and a SERIAL read timeout as contention', () => {
    expect(isPaxosTimeout(responseError(responseErrorCodes.writeTimeout, { writeType: 'CAS' }))).toBe(true);
    expect(isPaxosTimeout(responseError(responseErrorCodes.readTimeout, { consistencies: consistencies.serial }))).toBe(true);
  });

  it('does not retry ordinary timeouts, unavailability or other errors', () => {
    expect(isPaxosTimeout(responseError(responseErrorCodes.writeTimeout, { writeType: 'SIMPLE' }))).toBe(false);
    expect(isPaxosTimeout(responseError(responseErrorCodes.readTimeout, { consistencies: consistencies.one }))).toBe(false);
    expect(isPaxosTimeout(responseError(responseErrorCodes.unavailableException, {}))).toBe(false);
    expect(isPaxosTimeout(new Error('CAS'))).toBe(false);
  });

  it('backs off with jitter, growing with the attempt and capped', () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const delay = contentionBackoffMs(attempt, 20, 1000);
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThanOrEqual(Math.min(1000, 20 * 2 ** attempt));
    }
  });
});
