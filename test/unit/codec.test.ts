import { createCipheriv } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  CHUNK_CODECS,
  CompressionPolicy,
  CompressionTally,
  decodeChunk,
  encodeChunk,
  encodeWithPolicy,
} from '../../src/storage/codec.ts';
import { IntegrityError, InvalidArgumentError } from '../../src/util/errors.ts';

const MiB = 1024 * 1024;

function pseudoRandom(bytes: number): Buffer {
  return createCipheriv('aes-128-ctr', Buffer.alloc(16, 9), Buffer.alloc(16)).update(Buffer.alloc(bytes));
}

function textLike(bytes: number): Buffer {
  const line = 'Nov 22 04:20:01 host1 CRON[1234]: (root) CMD (run-parts /etc/cron.hourly) status=0 pid=';
  const lines: string[] = [];
  for (let i = 0, size = 0; size < bytes; i++) {
    const text = `${line}${i * 7919}\n`;
    lines.push(text);
    size += text.length;
  }
  return Buffer.from(lines.join('')).subarray(0, bytes);
}

/** A policy whose estimates are the given speeds (MiB/s) and ratio, as if measured. */
function measuredPolicy(uploadMiBps: number, compressMiBps: number, ratio: number): CompressionPolicy {
  const policy = new CompressionPolicy();
  policy.observeCompression(MiB, ratio * MiB, 1000 / compressMiBps);
  policy.observeUpload(MiB, 1000 / uploadMiBps);
  return policy;
}

describe('encodeChunk / decodeChunk', () => {
  it.each(CHUNK_CODECS)('round-trips %s', async (codec) => {
    const raw = textLike(300_000);
    const stored = await encodeChunk(codec, raw);
    expect((await decodeChunk(codec, stored, raw.length)).equals(raw)).toBe(true);
  });

  it('brotli shrinks text', async () => {
    const raw = textLike(MiB);
    expect((await encodeChunk('brotli', raw)).length).toBeLessThan(raw.length / 4);
  });

  it('refuses a stored chunk that does not decode to the expected size', async () => {
    const raw = textLike(100_000);
    const stored = await encodeChunk('brotli', raw);
    await expect(decodeChunk('brotli', stored, raw.length - 1)).rejects.toThrow(IntegrityError);
    await expect(decodeChunk('brotli', stored, raw.length + 1)).rejects.toThrow(
      /decodes to 100000 bytes, expected 100001/,
    );
    await expect(decodeChunk('brotli', stored.subarray(0, 1000), raw.length)).rejects.toThrow(IntegrityError);
    await expect(decodeChunk('brotli', pseudoRandom(1000), raw.length)).rejects.toThrow(IntegrityError);
    await expect(decodeChunk('none', raw, raw.length + 1)).rejects.toThrow(IntegrityError);
  });
});

describe('CompressionPolicy', () => {
  it('compresses to learn when nothing is measured yet', () => {
    expect(new CompressionPolicy().decide(MiB)).toEqual({
      codec: 'brotli',
      reason: 'learning',
      estimates: { uploadMiBps: null, compressMiBps: null, ratio: null },
      predicted: null,
    });
  });

  it('uploads raw on a fast network', () => {
    // 1 GiB/s network, 100 MiB/s compression at ratio 0.3: 1 ms raw against 10.3 ms compressed.
    const decision = measuredPolicy(1024, 100, 0.3).decide(MiB);
    expect(decision).toMatchObject({ codec: 'none', reason: 'raw-faster' });
    expect(decision.predicted!.rawMs).toBeCloseTo(1000 / 1024);
    expect(decision.predicted!.compressedMs).toBeCloseTo(10 + 300 / 1024);
  });

  it('compresses compressible data on a slow network', () => {
    // 10 MiB/s network: 100 ms raw against 10 + 30 ms compressed.
    const decision = measuredPolicy(10, 100, 0.3).decide(MiB);
    expect(decision).toMatchObject({ codec: 'brotli', reason: 'compression-faster' });
    expect(decision.predicted!.rawMs).toBeCloseTo(100);
    expect(decision.predicted!.compressedMs).toBeCloseTo(40);
    expect(decision.estimates.uploadMiBps).toBeCloseTo(10);
    expect(decision.estimates.compressMiBps).toBeCloseTo(100);
    expect(decision.estimates.ratio).toBe(0.3);
  });

  it('uploads raw when recent chunks did not compress, even on a slow network', () => {
    const decision = measuredPolicy(1, 100, 0.99).decide(MiB);
    expect(decision).toMatchObject({ codec: 'none', reason: 'incompressible-estimate' });
  });

  it('compresses compressible data before any upload was measured', () => {
    const policy = new CompressionPolicy();
    policy.observeCompression(MiB, 0.4 * MiB, 10);
    expect(policy.decide(MiB)).toMatchObject({ codec: 'brotli', reason: 'no-upload-estimate' });
  });

  it('compresses one chunk after resampleEvery skipped ones, to notice when the data changes', () => {
    const policy = new CompressionPolicy({ resampleEvery: 3 });
    policy.observeCompression(MiB, MiB, 10);
    const reasons = Array.from({ length: 5 }, () => policy.decide(MiB).reason);
    expect(reasons).toEqual([
      'incompressible-estimate',
      'incompressible-estimate',
      'incompressible-estimate',
      'resampling',
      'incompressible-estimate',
    ]);
  });

  it('follows measurements with a moving average', () => {
    const policy = new CompressionPolicy({ smoothing: 0.5 });
    policy.observeUpload(MiB, 1000 / 100); // 100 MiB/s
    policy.observeUpload(MiB, 1000 / 10); // 10 MiB/s
    expect(policy.estimates().uploadMiBps).toBeCloseTo(55);
    policy.observeUpload(0, 0); // an empty write says nothing about speed
    expect(policy.estimates().uploadMiBps).toBeCloseTo(55);
  });

  it('turns to compression when the network slows down', () => {
    const policy = measuredPolicy(1000, 100, 0.3);
    expect(policy.decide(MiB).codec).toBe('none');
    for (let i = 0; i < 20; i++) policy.observeUpload(MiB, 1000 / 5);
    expect(policy.decide(MiB)).toMatchObject({ codec: 'brotli', reason: 'compression-faster' });
  });

  it('refuses bad options and measurements, naming them', () => {
    expect(() => new CompressionPolicy({ smoothing: 0 })).toThrow(/smoothing must be in \(0, 1\]/);
    expect(() => new CompressionPolicy({ maxRatio: 1.5 })).toThrow(/maxRatio/);
    expect(() => new CompressionPolicy({ resampleEvery: 0 })).toThrow(/resampleEvery must be a positive integer/);
    expect(() => new CompressionPolicy().observeUpload(-1, 10)).toThrow(InvalidArgumentError);
    expect(() => new CompressionPolicy().observeUpload(10, Number.NaN)).toThrow(InvalidArgumentError);
  });

  it('makes decisions that survive serialization unchanged', () => {
    const decision = measuredPolicy(10, 100, 0.3).decide(MiB);
    expect(JSON.parse(JSON.stringify(decision))).toEqual(decision);
  });
});

describe('encodeWithPolicy', () => {
  it('compresses text and reports the measurement back to the policy', async () => {
    const policy = new CompressionPolicy();
    const raw = textLike(MiB);
    const encoded = await encodeWithPolicy(raw, policy);
    expect(encoded).toMatchObject({ codec: 'brotli', rawSize: MiB, decision: { reason: 'learning' } });
    expect((await decodeChunk('brotli', encoded.stored, MiB)).equals(raw)).toBe(true);
    expect(policy.estimates().ratio).toBeCloseTo(encoded.stored.length / MiB);
    expect(policy.estimates().compressMiBps).toBeGreaterThan(0);
  });

  it('stores random data raw after finding it does not compress, then stops trying', async () => {
    const policy = new CompressionPolicy();
    const raw = pseudoRandom(MiB);
    const first = await encodeWithPolicy(raw, policy);
    expect(first).toMatchObject({ codec: 'none', decision: { codec: 'none', reason: 'incompressible' } });
    expect(first.stored).toBe(raw);
    const second = await encodeWithPolicy(raw, policy);
    expect(second.decision.reason).toBe('incompressible-estimate');
  });
});

describe('CompressionTally', () => {
  it('sums bytes and counts decisions per reason', async () => {
    const policy = new CompressionPolicy();
    const tally = new CompressionTally();
    expect(tally.summary()).toEqual({ reasons: {}, rawBytes: 0, storedBytes: 0, lastEstimates: null });
    const chunks = [await encodeWithPolicy(pseudoRandom(MiB), policy)];
    chunks.push(await encodeWithPolicy(pseudoRandom(MiB), policy));
    for (const chunk of chunks) tally.add(chunk);
    expect(tally.summary()).toEqual({
      reasons: { incompressible: 1, 'incompressible-estimate': 1 },
      rawBytes: 2 * MiB,
      storedBytes: 2 * MiB,
      lastEstimates: chunks[1]!.decision.estimates,
    });
  });
});
