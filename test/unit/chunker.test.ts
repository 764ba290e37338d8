import { createCipheriv, createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import {
  CHUNK_SIZE_LIMIT,
  Chunker,
  DEFAULT_CHUNKER_OPTIONS,
  type ByteSource,
  type ChunkerOptions,
  type ChunkerParams,
  GEAR_TABLE,
  PAGE_ALIGNMENT,
  chunkStream,
  compileChunkerOptions,
  hashedChunks,
  sha256Hex,
} from '../../src/storage/chunker.ts';
import { InvalidArgumentError } from '../../src/util/errors.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
/** Small sizes so statistical properties show on a few MiB. */
const SMALL: ChunkerOptions = { minSize: 4 * KiB, averageSize: 16 * KiB, maxSize: 64 * KiB };

/** Deterministic incompressible bytes: AES-CTR keystream of a seed. */
function pseudoRandom(bytes: number, seed = 1): Buffer {
  return createCipheriv('aes-128-ctr', Buffer.alloc(16, seed), Buffer.alloc(16)).update(Buffer.alloc(bytes));
}

/** Feeds `data` in pieces of the given sizes, cycling through them. */
function* inPieces(data: Buffer, pieceSizes: readonly number[] = [data.length]): Generator<Buffer> {
  let offset = 0;
  for (let i = 0; offset < data.length; i++) {
    const size = pieceSizes[i % pieceSizes.length]!;
    yield data.subarray(offset, offset + size);
    offset += size;
  }
}

async function collect(source: ByteSource, options?: ChunkerOptions): Promise<Buffer[]> {
  const chunks: Buffer[] = [];
  for await (const chunk of chunkStream(source, options)) chunks.push(chunk);
  return chunks;
}

/** sha256 of the gear table's values written in decimal, comma-separated. */
const GEAR_TABLE_SHA256 = 'c658ee7f92be580a3340c7b53c7578d0b35c87fa2f503a9f21d9c9b0b6ce8b01';

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

describe('compileChunkerOptions', () => {
  it('defaults to 256 KiB / 1 MiB (normal size 768 KiB) / 4 MiB', () => {
    expect(compileChunkerOptions()).toMatchObject({ minSize: 256 * KiB, averageSize: MiB, normalSize: 768 * KiB, maxSize: 4 * MiB });
  });

  it.each([
    [{ minSize: 16 }, /minSize must be at least 32/],
    [{ minSize: 1.5 }, /minSize must be an integer/],
    [{ averageSize: 3 * MiB }, /averageSize must be a power of two/],
    [{ averageSize: 128 * KiB }, /averageSize must be a power of two greater than minSize/],
    [{ maxSize: MiB }, /maxSize must be greater than averageSize/],
    [{ normalSize: 256 * KiB }, /normalSize must be a multiple of the alignment \(1\) greater than minSize/],
    [{ normalSize: 2 * MiB }, /normalSize .* at most averageSize/],
    [{ normalSize: 768 * KiB + 1, alignment: 4 * KiB }, /normalSize must be a multiple of the alignment \(4096\)/],
    [{ maxSize: CHUNK_SIZE_LIMIT + 1 }, /maxSize must be .* at most 8388608/],
    [{ maxSize: Number.NaN }, /maxSize must be an integer/],
  ])('refuses %o, naming the field', (options, message) => {
    expect(() => compileChunkerOptions(options)).toThrow(InvalidArgumentError);
    expect(() => compileChunkerOptions(options)).toThrow(message);
  });
});

describe('chunkStream', () => {
  it('yields non-empty chunks within the size bounds that concatenate to the input', async () => {
    const data = pseudoRandom(4 * MiB);
    const chunks = await collect(inPieces(data), SMALL);
    expect(Buffer.concat(chunks).equals(data)).toBe(true);
    for (const chunk of chunks.slice(0, -1)) {
      expect(chunk.length).toBeGreaterThanOrEqual(SMALL.minSize!);
      expect(chunk.length).toBeLessThanOrEqual(SMALL.maxSize!);
    }
    expect(chunks.at(-1)!.length).toBeGreaterThan(0);
    // Normalized chunking keeps the mean near the target (skipping minSize adds to it).
    const mean = data.length / chunks.length;
    expect(mean).toBeGreaterThan(0.8 * SMALL.averageSize!);
    expect(mean).toBeLessThan(1.6 * SMALL.averageSize!);
  });

  it('finds the same boundaries however the stream is split into buffers', async () => {
    const data = pseudoRandom(MiB, 2);
    const whole = (await collect(inPieces(data), SMALL)).map(sha256);
    expect((await collect(inPieces(data, [1, 7, 4096, 65_537, 333]), SMALL)).map(sha256)).toEqual(whole);
    expect((await collect(Readable.from(inPieces(data, [16 * KiB])), SMALL)).map(sha256)).toEqual(whole);
  });

  it('changes only the chunks around an insertion (32 MiB, default sizes)', async () => {
    const original = pseudoRandom(32 * MiB, 3);
    const at = 5 * MiB;
    const edited = Buffer.concat([original.subarray(0, at), pseudoRandom(100, 4), original.subarray(at)]);
    const before = new Set((await collect(inPieces(original, [64 * KiB]))).map(sha256));
    const after = (await collect(inPieces(edited, [64 * KiB]))).map(sha256);
    const changed = after.filter((hash) => !before.has(hash));
    expect(before.size).toBeGreaterThan(20);
    expect(changed.length).toBeGreaterThanOrEqual(1);
    expect(changed.length).toBeLessThanOrEqual(3);
  });

  it('cuts runs of zeros at maxSize, into identical chunks', async () => {
    const chunks = await collect(inPieces(Buffer.alloc(10 * MiB), [MiB]));
    expect(chunks.map((c) => c.length)).toEqual([4 * MiB, 4 * MiB, 2 * MiB]);
    expect(sha256(chunks[0]!)).toBe(sha256(chunks[1]!));
  });

  it('yields a chunk as soon as it is found, without reading the rest of the stream', async () => {
    let pulled = 0;
    function* endless(): Generator<Buffer> {
      for (let seed = 1; ; seed++) {
        const piece = pseudoRandom(64 * KiB, seed);
        pulled += piece.length;
        yield piece;
      }
    }
    const options = { minSize: 64 * KiB, averageSize: 256 * KiB, maxSize: MiB };
    for await (const chunk of chunkStream(endless(), options)) {
      expect(chunk.length).toBeLessThanOrEqual(MiB);
      expect(pulled).toBeLessThanOrEqual(chunk.length + 64 * KiB);
      break;
    }
  });

  it('yields nothing for an empty stream and the input itself when shorter than minSize', async () => {
    expect(await collect(inPieces(Buffer.alloc(0)))).toEqual([]);
    const small = pseudoRandom(1000);
    expect(await collect(inPieces(small, [10]))).toEqual([small]);
  });

  it('refuses a stream of strings', async () => {
    const strings = Readable.from(['not', 'bytes']) as AsyncIterable<Uint8Array>;
    await expect(collect(strings)).rejects.toThrow(InvalidArgumentError);
  });

  // The gear table and the boundary rule are part of the stored format: if either changed, no chunk of an
  // earlier version would be found again and every checkpoint would upload everything.
  it('keeps the gear table and the boundaries of the stored format', async () => {
    const table = Array.from(GEAR_TABLE).join(',');
    expect(createHash('sha256').update(table).digest('hex')).toBe(GEAR_TABLE_SHA256);
    expect(Array.from(GEAR_TABLE.slice(0, 4))).toEqual([-1333685852, -1082157292, -309883936, 801430895]);
    let offset = 0;
    const ends: number[] = [];
    for await (const chunk of chunkStream(inPieces(pseudoRandom(4 * MiB, 7)), SMALL)) {
      offset += chunk.length;
      ends.push(offset);
    }
    expect(ends.slice(0, 12)).toEqual([
      15470, 29257, 45607, 58962, 71303, 84817, 99933, 114131, 128203, 143171, 155884, 164355,
    ]);
  });
});

/** FastCDC as specified (one chain, whole input at once): what the streaming, two-chain scanner must match. */
function referenceEnds(data: Uint8Array, options: ChunkerParams): number[] {
  const bits = Math.log2(options.averageSize);
  const maskBelow = (~0 << (32 - (bits + 2))) | 0;
  const maskAbove = (~0 << (32 - (bits - 2))) | 0;
  const ends: number[] = [];
  for (let start = 0; start < data.length; ) {
    const normalEnd = Math.min(data.length, start + options.normalSize);
    const maxEnd = Math.min(data.length, start + options.maxSize);
    let end = -1;
    let hash = 0;
    let i = start + options.minSize;
    for (; end < 0 && i < normalEnd; i++) {
      hash = ((hash << 1) + GEAR_TABLE[data[i]!]!) | 0;
      if ((hash & maskBelow) === 0) end = i + 1;
    }
    for (; end < 0 && i < maxEnd; i++) {
      hash = ((hash << 1) + GEAR_TABLE[data[i]!]!) | 0;
      if ((hash & maskAbove) === 0) end = i + 1;
    }
    if (end < 0) end = maxEnd;
    ends.push(end);
    start = end;
  }
  return ends;
}

describe('chunk boundaries against the reference FastCDC', () => {
  const offsetsOf = async (source: ByteSource, options: ChunkerOptions) => {
    let offset = 0;
    const out: number[] = [];
    for await (const chunk of chunkStream(source, options)) out.push((offset += chunk.length));
    return out;
  };
  const lowEntropy = (bytes: number, seed: number) => {
    const noise = pseudoRandom(bytes, seed);
    return Buffer.from(noise.map((b) => (b < 16 ? b : 65 + (b % 4)))); // mostly 4 letters: long spans, late matches
  };

  it.each([
    ['small sizes', SMALL],
    ['tiny sizes (spans near the two-chain threshold)', { minSize: 64, averageSize: 512, maxSize: 2048 }],
    ['default sizes', DEFAULT_CHUNKER_OPTIONS],
  ])('match it exactly with %s, however the input is split', async (_name, options) => {
    const full = { ...DEFAULT_CHUNKER_OPTIONS, ...options };
    const size = full.maxSize * 6;
    for (const [seed, data] of [
      [21, pseudoRandom(size, 21)],
      [22, lowEntropy(size, 22)],
      [23, Buffer.concat([pseudoRandom(size / 3, 23), Buffer.alloc(size / 3), pseudoRandom(size / 3, 24)])],
    ] as const) {
      const expected = referenceEnds(data, compileChunkerOptions(options));
      expect(expected.length, `seed ${seed}`).toBeGreaterThan(3);
      expect(await offsetsOf([data], options), `seed ${seed}, one buffer`).toEqual(expected);
      expect(await offsetsOf(inPieces(data, [1, 313, 64 * KiB, 7, 4095, 100_003]), options), `seed ${seed}, pieces`).toEqual(expected);
    }
  });
});

/** Aligned chunking by its definition: FastCDC's rule tested only at aligned lengths, on the 32 bytes before each. */
function referenceAlignedEnds(data: Uint8Array, options: ChunkerParams): number[] {
  const bits = Math.log2(options.averageSize / options.alignment);
  const maskBelow = (~0 << (32 - (bits + 2))) | 0;
  const maskAbove = (~0 << (32 - (bits - 2))) | 0;
  const ends: number[] = [];
  for (let start = 0; start < data.length; ) {
    let end = Math.min(data.length, start + options.maxSize);
    for (let length = options.minSize + options.alignment; length < options.maxSize && start + length <= data.length; length += options.alignment) {
      let hash = 0;
      for (let i = start + length - 32; i < start + length; i++) hash = ((hash << 1) + GEAR_TABLE[data[i]!]!) | 0;
      if ((hash & (length <= options.normalSize ? maskBelow : maskAbove)) === 0) {
        end = start + length;
        break;
      }
    }
    ends.push(end);
    start = end;
  }
  return ends;
}

describe('aligned chunking (CRIU pages images)', () => {
  const PAGES: Required<ChunkerOptions> = { ...DEFAULT_CHUNKER_OPTIONS, alignment: PAGE_ALIGNMENT };
  const SMALL_ALIGNED = { minSize: 4 * KiB, averageSize: 16 * KiB, maxSize: 64 * KiB, alignment: 512 };
  const ends = async (source: ByteSource, options: ChunkerOptions) => {
    let offset = 0;
    const out: number[] = [];
    for await (const chunk of chunkStream(source, options)) out.push((offset += chunk.length));
    return out;
  };

  it.each([
    ['small sizes', SMALL_ALIGNED],
    ['default sizes, 4 KiB pages', PAGES],
  ])('cuts at aligned offsets only, as the rule says, however the input is split (%s)', async (_name, options) => {
    const size = options.maxSize * 8;
    for (const data of [pseudoRandom(size, 31), Buffer.from(pseudoRandom((size * 3) / 4, 32).toString('base64')), Buffer.alloc(size)]) {
      const expected = referenceAlignedEnds(data, compileChunkerOptions(options));
      expect(expected.slice(0, -1).every((end) => end % options.alignment === 0)).toBe(true);
      expect(await ends([data], options)).toEqual(expected);
      expect(await ends(inPieces(data, [1, 313, 64 * KiB, 7, 4095, 100_003]), options)).toEqual(expected);
      expect(await ends(Readable.from(inPieces(data, [MiB])), options)).toEqual(expected);
    }
  });

  it('keeps the mean chunk size at most 1 MiB, near it, cut at any byte or at pages', async () => {
    const data = pseudoRandom(64 * MiB, 33);
    for (const options of [PAGES, DEFAULT_CHUNKER_OPTIONS]) {
      const count = (await ends([data], options)).length;
      expect(data.length / count).toBeGreaterThan(0.8 * MiB);
      expect(data.length / count).toBeLessThanOrEqual(MiB);
    }
  });

  it('changes only the chunks around inserted and rewritten pages (32 MiB)', async () => {
    const original = pseudoRandom(32 * MiB, 34);
    const page = (n: number) => n * PAGE_ALIGNMENT;
    const edited = Buffer.concat([
      original.subarray(0, page(1000)),
      pseudoRandom(page(3), 35), // three pages mapped in
      original.subarray(page(1000), page(5000)),
      pseudoRandom(page(1), 36), // one page rewritten
      original.subarray(page(5001)),
    ]);
    const before = new Set((await collect(inPieces(original, [MiB]), PAGES)).map(sha256));
    const after = (await collect(inPieces(edited, [MiB]), PAGES)).map(sha256);
    expect(before.size).toBeGreaterThan(20);
    const changed = after.filter((hash) => !before.has(hash));
    expect(changed.length).toBeGreaterThanOrEqual(2);
    expect(changed.length).toBeLessThanOrEqual(5);
  });

  it('refuses an alignment that is not a power of two dividing the sizes', () => {
    for (const alignment of [0, 3, 3000, 256 * KiB]) {
      expect(() => compileChunkerOptions({ alignment })).toThrow(InvalidArgumentError);
    }
  });
});

describe('the stored format with default sizes', () => {
  // The same guard for the sizes every snapshot uses: a faster chunker must cut exactly here, or dedup against
  // earlier versions breaks.
  it('cuts 24 MiB of random bytes (read in 64 KiB buffers) and 8 MiB of base64 at the same offsets as ever', async () => {
    const ends = async (source: ByteSource) => {
      let offset = 0;
      const out: number[] = [];
      for await (const chunk of chunkStream(source)) out.push((offset += chunk.length));
      return out;
    };
    expect(await ends(inPieces(pseudoRandom(24 * MiB, 11), [64 * KiB]))).toEqual([
      845141, 1844864, 3212675, 4316106, 5183947, 5818577, 6841444, 8004103, 9200668, 9589529, 10479964, 11600816,
      12480287, 13275946, 14380772, 15283391, 16300236, 17662679, 18049683, 19018465, 19956401, 21117524, 21908098,
      23438571, 24781652, 25165824,
    ]);
    const base64 = Buffer.from(pseudoRandom(6 * MiB, 12).toString('base64'));
    expect(await ends([base64])).toEqual([1096877, 2006717, 2858125, 3636705, 4553207, 5233384, 6406696, 7432420, 8241531, 8388608]);
  });
});

describe('Chunker', () => {
  it('returns completed chunks per push and the remainder on finish', () => {
    const data = pseudoRandom(256 * KiB, 5);
    const chunker = new Chunker(SMALL);
    const chunks = [...chunker.push(data.subarray(0, 100 * KiB)), ...chunker.push(data.subarray(100 * KiB))];
    const last = chunker.finish();
    expect(last).toBeDefined();
    expect(Buffer.concat([...chunks, last!]).equals(data)).toBe(true);
    expect(chunker.finish()).toBeUndefined();
  });
});

describe('hashedChunks', () => {
  it("pairs each chunk with its sha256", async () => {
    const data = pseudoRandom(512 * KiB, 6);
    for await (const { data: chunk, hash } of hashedChunks(inPieces(data), SMALL)) {
      expect(hash).toBe(sha256(chunk));
    }
  });

  it('yields the same chunks and hashes, in order, hashing on the thread pool or on the event loop', async () => {
    const data = pseudoRandom(2 * MiB, 8);
    const run = async (parallelism: number) => {
      const out: Array<[string, string]> = [];
      for await (const { data: chunk, hash } of hashedChunks(inPieces(data, [10 * KiB]), SMALL, { hashParallelism: parallelism })) out.push([sha256(chunk), hash]);
      return out;
    };
    const onLoop = await run(0);
    expect(onLoop.length).toBeGreaterThan(50);
    for (const [actual, claimed] of onLoop) expect(claimed).toBe(actual);
    expect(await run(1)).toEqual(onLoop);
    expect(await run(4)).toEqual(onLoop);
  });
});

describe('sha256Hex', () => {
  it('equals crypto sha256 for empty, small, unaligned views and multi-MiB inputs', async () => {
    const big = pseudoRandom(5 * MiB + 3, 9);
    for (const input of [Buffer.alloc(0), Buffer.from('abc'), big.subarray(17, 100_017), big]) {
      expect(await sha256Hex(input)).toBe(sha256(input));
    }
    expect(await sha256Hex(Buffer.from('abc'))).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });
});
