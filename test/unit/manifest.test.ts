import { createHash } from 'node:crypto';
import { pack, unpack } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import {
  MANIFEST_FORMAT_VERSION,
  MANIFEST_MAGIC,
  type SnapshotFile,
  UnsupportedManifestVersionError,
  type VersionManifest,
  decodeManifest,
  encodeManifest,
  snapshotSha256,
} from '../../src/storage/manifest.ts';
import { SEAL_OVERHEAD } from '../../src/storage/encryption.ts';
import { FailedPreconditionError, IntegrityError } from '../../src/util/errors.ts';

const hashOf = (text: string) => createHash('sha256').update(text).digest('hex');

function sampleFiles(): SnapshotFile[] {
  return [
    {
      path: 'images/pages-1.img',
      mode: 0o600,
      size: 3_000_000,
      chunks: [
        { hash: hashOf('a'), size: 1_000_000, storedSize: 300_000, codec: 'brotli', bucket: 0 },
        { hash: hashOf('b'), size: 2_000_000, storedSize: 2_000_000, codec: 'none', bucket: 1 },
      ],
    },
    {
      path: 'config',
      mode: 0o644,
      size: 1234,
      chunks: [{ hash: hashOf('c'), size: 1234, storedSize: 1234, codec: 'none', bucket: 0 }],
    },
    { path: 'images/empty.img', mode: 0o600, size: 0, chunks: [] },
  ];
}

function sampleManifest(): VersionManifest {
  const files = sampleFiles();
  return {
    container: 'counter-1',
    version: 7,
    sourceHost: '8f0c2a52-6a52-4fd4-9d55-0c6f7d3e9a11',
    createdAt: 1_763_780_000_000,
    committedAt: 1_763_780_004_250,
    files,
    snapshotSha256: snapshotSha256(files),
    compression: {
      reasons: { learning: 1, 'raw-faster': 1 },
      rawBytes: 3_000_000,
      storedBytes: 2_300_000,
      lastEstimates: { uploadMiBps: 412.5, compressMiBps: 96.25, ratio: 0.3 },
    },
    timings: { freezeMs: 310.5, dumpMs: 820, uploadMs: 2900.25, totalMs: 4250 },
  };
}

/** An envelope around a body that is well-formed and correctly checksummed, so only validation can refuse it. */
function envelopeOf(body: unknown, formatVersion = MANIFEST_FORMAT_VERSION): Buffer {
  const bytes = pack(body);
  return pack([MANIFEST_MAGIC, formatVersion, bytes, createHash('sha256').update(bytes).digest()]);
}

function decodeError(encoded: Uint8Array): unknown {
  try {
    decodeManifest(encoded);
  } catch (err) {
    return err;
  }
  return undefined;
}

describe('encodeManifest / decodeManifest', () => {
  it('round-trips a manifest', () => {
    const manifest = sampleManifest();
    expect(decodeManifest(encodeManifest(manifest))).toEqual(manifest);
  });

  it('writes format 1 without encrypted chunks (older agents read it) and 2 with them, and reads both', () => {
    const formatOf = (encoded: Buffer) => (unpack(encoded) as unknown[])[1];
    expect(formatOf(encodeManifest(sampleManifest()))).toBe(1);
    const encrypted = sampleManifest();
    const chunk = encrypted.files[0]!.chunks[1]!;
    Object.assign(chunk, { keyId: '0123456789abcdef', storedSize: chunk.size + SEAL_OVERHEAD });
    const encoded = encodeManifest(encrypted);
    expect(formatOf(encoded)).toBe(2);
    expect(decodeManifest(encoded)).toEqual(encrypted);
  });

  it('round-trips a manifest with no compression decisions', () => {
    const compression = { reasons: {}, rawBytes: 0, storedBytes: 0, lastEstimates: null };
    const manifest = { ...sampleManifest(), compression };
    expect(decodeManifest(encodeManifest(manifest))).toEqual(manifest);
  });

  it('detects truncation at any length', () => {
    const encoded = encodeManifest(sampleManifest());
    for (let length = 0; length < encoded.length; length++) {
      expect(decodeError(encoded.subarray(0, length)), `truncated to ${length}`).toBeInstanceOf(IntegrityError);
    }
  });

  it('detects a flipped bit anywhere', () => {
    const encoded = encodeManifest(sampleManifest());
    for (let offset = 0; offset < encoded.length; offset++) {
      for (const bit of [0x01, 0x80]) {
        const corrupted = Buffer.from(encoded);
        corrupted[offset]! ^= bit;
        expect(decodeError(corrupted), `bit ${bit} at ${offset}`).toBeInstanceOf(IntegrityError);
      }
    }
  });

  it('detects trailing garbage', () => {
    const encoded = Buffer.concat([encodeManifest(sampleManifest()), Buffer.from([0])]);
    expect(decodeError(encoded)).toBeInstanceOf(IntegrityError);
  });

  it('says plainly when a manifest comes from a newer format', () => {
    const error = decodeError(envelopeOf({ anything: 'new' }, MANIFEST_FORMAT_VERSION + 1));
    expect(error).toBeInstanceOf(UnsupportedManifestVersionError);
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect((error as Error).message).toBe(
      `manifest format version ${MANIFEST_FORMAT_VERSION + 1} is newer than this agent supports ` +
        `(${MANIFEST_FORMAT_VERSION}): upgrade the agent to read it`,
    );
  });

  it('refuses something that is not a manifest', () => {
    expect(decodeError(pack({ hello: 'world' }))).toBeInstanceOf(IntegrityError);
    expect(decodeError(pack(['other-magic', 1, Buffer.alloc(1), Buffer.alloc(32)]))).toBeInstanceOf(IntegrityError);
    expect((decodeError(envelopeOf(sampleManifest(), 0)) as Error).message).toMatch(/format version is 0/);
  });

  it('checks a well-formed body field by field, naming the bad one', () => {
    const withFiles = (mutate: (files: SnapshotFile[]) => void): VersionManifest => {
      const manifest = sampleManifest();
      mutate(manifest.files);
      return { ...manifest, snapshotSha256: snapshotSha256(manifest.files) };
    };
    const cases: [unknown, RegExp][] = [
      [{ ...sampleManifest(), version: 0 }, /field version is 0, not an integer ≥ 1/],
      [{ ...sampleManifest(), container: '' }, /field container is not a non-empty string/],
      [{ ...sampleManifest(), extra: 1 }, /field manifest has unknown key "extra"/],
      [{ ...sampleManifest(), committedAt: 1 }, /field committedAt is before createdAt/],
      [{ ...sampleManifest(), snapshotSha256: hashOf('x') }, /field snapshotSha256 does not match the file list/],
      [withFiles((f) => (f[0]!.path = '../../etc/passwd')), /field files\[0\].path "..\/..\/etc\/passwd" is not a plain/],
      [withFiles((f) => (f[0]!.path = '/etc/passwd')), /files\[0\].path .* is not a plain relative path/],
      [withFiles((f) => (f[1]!.path = f[0]!.path)), /field files\[1\].path repeats/],
      [withFiles((f) => (f[0]!.size = 1)), /field files\[0\].size is 1 but its chunks add up to 3000000/],
      [withFiles((f) => (f[0]!.mode = 0o100644)), /field files\[0\].mode 100644 has bits beyond the permission bits/],
      [withFiles((f) => (f[0]!.chunks[0]!.hash = 'ABC')), /field files\[0\].chunks\[0\].hash is not a hex sha256/],
      [withFiles((f) => Object.assign(f[0]!.chunks[0]!, { codec: 'zstd' })), /chunks\[0\].codec is "zstd", not one of/],
      [withFiles((f) => (f[0]!.chunks[1]!.storedSize = 5)), /chunks\[1\].storedSize is 5 for a raw chunk of 2000000/],
      [withFiles((f) => Object.assign(f[0]!.chunks[1]!, { keyId: 'secret' })), /chunks\[1\].keyId is not 16 hex digits/],
      [
        withFiles((f) => Object.assign(f[0]!.chunks[1]!, { keyId: '0123456789abcdef' })),
        /chunks\[1\].storedSize is 2000000 for a raw chunk of 2000000 bytes encrypted/,
      ],
      [withFiles((f) => (f[0]!.chunks[1]!.bucket = -1)), /chunks\[1\].bucket is -1, not an integer ≥ 0/],
      [{ ...sampleManifest(), timings: { freezeMs: 1, dumpMs: 1, uploadMs: 1 } }, /field timings.totalMs is missing/],
      [{ ...sampleManifest(), timings: { freezeMs: -1, dumpMs: 1, uploadMs: 1, totalMs: 1 } }, /freezeMs is -1/],
      [
        { ...sampleManifest(), compression: { ...sampleManifest().compression, reasons: { guessed: 1 } } },
        /field compression.reasons has unknown key "guessed"/,
      ],
    ];
    for (const [body, message] of cases) {
      const error = decodeError(envelopeOf(body));
      expect(error, String(message)).toBeInstanceOf(IntegrityError);
      expect((error as Error).message).toMatch(message);
      expect(() => encodeManifest(body as VersionManifest)).toThrow(message);
    }
  });
});

describe('snapshotSha256', () => {
  it('changes with content and metadata, not with where or how chunks are stored', () => {
    const base = snapshotSha256(sampleFiles());
    const restored = sampleFiles();
    restored[0]!.chunks[0] = { ...restored[0]!.chunks[0]!, codec: 'none', storedSize: 1_000_000, bucket: 9 };
    expect(snapshotSha256(restored)).toBe(base);

    const changedChunk = sampleFiles();
    changedChunk[0]!.chunks[1]!.hash = hashOf('z');
    const changedMode = sampleFiles();
    changedMode[1]!.mode = 0o600;
    const reordered = sampleFiles().reverse();
    for (const files of [changedChunk, changedMode, reordered]) expect(snapshotSha256(files)).not.toBe(base);
  });
});
