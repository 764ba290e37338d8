/**
 * Content-defined chunking (FastCDC: gear rolling hash with normalized chunking, Xia et al., USENIX ATC 2016).
 * A boundary falls where the hash of the last 32 bytes matches a mask, so boundaries depend only on content:
 * inserting or deleting bytes changes the chunks around the edit and no others, and a chunk that did not change
 * since an earlier version has the same sha256 and is not uploaded again.
 *
 * Streaming: chunks are yielded as soon as their end is found. Memory held is the bytes of the current chunk
 * (≤ maxSize) plus the input buffer being scanned; a multi-GB dump is never held whole.
 */
import { createHash, webcrypto } from 'node:crypto';
import { InvalidArgumentError } from '../util/errors.ts';
import { mapOrdered } from './pipeline.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * The hard ceiling for maxSize. Cassandra rejects a mutation larger than half its commit log segment
 * (16 MiB with the default 32 MiB segment); a chunk plus its row overhead must stay well under that.
 */
export const CHUNK_SIZE_LIMIT = 8 * MiB;

/** The gear hash remembers the last 32 bytes (one bit shifted out per byte); smaller chunks make no sense. */
const HASH_WINDOW = 32;

/** What can be chunked: a Node Readable, or any async or sync iterable of byte buffers. */
export type ByteSource = AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

export interface ChunkerOptions {
  /** No boundary is placed before this many bytes (except at the end of the stream). Default 256 KiB. */
  minSize?: number;
  /**
   * The size the two boundary masks are derived from (FastCDC's expected size); a power of two. Default 1 MiB.
   * Boundaries are 4× rarer than one per averageSize bytes below normalSize, 4× more frequent from it on.
   */
  averageSize?: number;
  /**
   * FastCDC's normal size, where the boundary rule switches from strict to loose: a multiple of the alignment,
   * above minSize and at most averageSize. Default 3/4 of averageSize. With the default sizes the mean chunk of
   * random data is ~0.94 MiB (with the switch at averageSize itself it was ~1.14 MiB: few chunks end before it).
   */
  normalSize?: number;
  /** A boundary is forced at this many bytes; at most CHUNK_SIZE_LIMIT. Default 4 MiB. */
  maxSize?: number;
  /**
   * Boundaries fall only at stream offsets that are multiples of this (a power of two dividing minSize,
   * averageSize and maxSize). Default 1: any byte. CRIU's pages-*.img files are memory pages end to end, and
   * memory changes, moves and grows a page at a time, so for them boundaries at 4 KiB offsets (PAGE_ALIGNMENT)
   * are as content-defined as byte boundaries, and the gear hash is computed only over the 32 bytes before
   * each candidate offset (the rolling hash's exact value there): ~1% of the bytes instead of all of them.
   */
  alignment?: number;
}

/** The alignment for CRIU pages images: the x86-64 page size. */
export const PAGE_ALIGNMENT = 4 * KiB;

/** Validated chunker parameters, with the two normalized-chunking masks derived from averageSize. */
export interface ChunkerParams {
  readonly minSize: number;
  readonly averageSize: number;
  readonly normalSize: number;
  readonly maxSize: number;
  readonly alignment: number;
  /**
   * Used below normalSize: 2 bits more than log2(averageSize / alignment) (one candidate per `alignment` bytes),
   * so boundaries are rarer there.
   */
  readonly maskBelowAverage: number;
  /** Used from normalSize on: 2 bits fewer, so boundaries come sooner. Together they narrow the size spread. */
  readonly maskAboveAverage: number;
}

export const DEFAULT_CHUNKER_OPTIONS: Readonly<Required<ChunkerOptions>> = {
  minSize: 256 * KiB,
  averageSize: 1 * MiB,
  normalSize: 768 * KiB,
  maxSize: 4 * MiB,
  alignment: 1,
};

/** Defaults, then validation of each field; throws InvalidArgumentError naming the bad field. */
export function compileChunkerOptions(options: ChunkerOptions = {}): ChunkerParams {
  const minSize = options.minSize ?? DEFAULT_CHUNKER_OPTIONS.minSize;
  const averageSize = options.averageSize ?? DEFAULT_CHUNKER_OPTIONS.averageSize;
  const maxSize = options.maxSize ?? DEFAULT_CHUNKER_OPTIONS.maxSize;
  requireInteger('minSize', minSize);
  requireInteger('averageSize', averageSize);
  requireInteger('maxSize', maxSize);
  if (minSize < HASH_WINDOW) {
    throw new InvalidArgumentError(`chunker option minSize must be at least ${HASH_WINDOW} bytes, got ${minSize}`);
  }
  if (averageSize <= minSize || (averageSize & (averageSize - 1)) !== 0) {
    throw new InvalidArgumentError(
      `chunker option averageSize must be a power of two greater than minSize (${minSize}), got ${averageSize}`,
    );
  }
  if (maxSize <= averageSize || maxSize > CHUNK_SIZE_LIMIT) {
    throw new InvalidArgumentError(
      `chunker option maxSize must be greater than averageSize (${averageSize}) ` +
        `and at most ${CHUNK_SIZE_LIMIT}, got ${maxSize}`,
    );
  }
  const alignment = options.alignment ?? DEFAULT_CHUNKER_OPTIONS.alignment;
  requireInteger('alignment', alignment);
  if (alignment < 1 || (alignment & (alignment - 1)) !== 0 || minSize % alignment !== 0 || maxSize % alignment !== 0 || averageSize / alignment < 8) {
    throw new InvalidArgumentError(
      `chunker option alignment must be a power of two dividing minSize and maxSize, at most averageSize / 8, got ${alignment}`,
    );
  }
  const normalSize = options.normalSize ?? (averageSize / 4) * 3;
  requireInteger('normalSize', normalSize);
  if (normalSize <= minSize || normalSize > averageSize || normalSize % alignment !== 0) {
    throw new InvalidArgumentError(
      `chunker option normalSize must be a multiple of the alignment (${alignment}) greater than minSize (${minSize}) ` +
        `and at most averageSize (${averageSize}), got ${normalSize}`,
    );
  }
  const averageBits = Math.log2(averageSize / alignment);
  return {
    minSize,
    averageSize,
    normalSize,
    maxSize,
    alignment,
    maskBelowAverage: topBitsMask(averageBits + 2),
    maskAboveAverage: topBitsMask(averageBits - 2),
  };
}

function requireInteger(field: keyof ChunkerOptions, value: unknown): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new InvalidArgumentError(
      `chunker option ${field} must be an integer number of bytes, got ${String(value)}`,
    );
  }
}

/** The high bits of the hash depend on the most recent 32 bytes; the low bits only on the last few. */
function topBitsMask(bits: number): number {
  return (~0 << (32 - bits)) | 0;
}

/**
 * 256 pseudo-random 32-bit values, one per byte value: the SplitMix32 sequence (Steele, Lea, Flood 2014,
 * the 32-bit variant with the MurmurHash3 finalizer) from the fixed seed 0x4c584352 ("LXCR"). It is part of the
 * storage format in effect: changing it moves every boundary, so no chunk of an earlier version would be reused.
 */
const GEAR_SEED = 0x4c584352;
export const GEAR_TABLE: Readonly<Int32Array> = (() => {
  const table = new Int32Array(256);
  let state = GEAR_SEED;
  for (let i = 0; i < table.length; i++) {
    state = (state + 0x9e3779b9) | 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    table[i] = z ^ (z >>> 16);
  }
  return table;
})();

/**
 * Finds boundaries across the input buffers of one stream. Resumable: the rolling hash and the length of the
 * chunk in progress carry over from one buffer to the next.
 */
class BoundaryScanner {
  private chunkLength = 0;
  private hash = 0;

  constructor(private readonly params: ChunkerParams) {}

  /**
   * Scans `data` from `start`. Returns the index just past the end of the current chunk, or -1 when `data` ends
   * before the chunk does.
   */
  scan(data: Uint8Array, start: number): number {
    const { minSize, normalSize, maxSize, maskBelowAverage, maskAboveAverage } = this.params;
    // Index in `data` where the current chunk began (negative when it began in an earlier buffer).
    const chunkStart = start - this.chunkLength;
    // FastCDC's cut-point skipping: no boundary can fall before minSize, so those bytes are not even hashed.
    const hashFrom = Math.max(start, chunkStart + minSize);
    const normalEnd = Math.min(data.length, chunkStart + normalSize);
    const maxEnd = chunkStart + maxSize;
    const scanEnd = Math.min(data.length, maxEnd);

    let end = this.rollUntilMatch(data, hashFrom, normalEnd, maskBelowAverage);
    if (end < 0) end = this.rollUntilMatch(data, Math.max(hashFrom, normalEnd), scanEnd, maskAboveAverage);
    if (end < 0 && scanEnd === maxEnd) end = maxEnd;
    if (end >= 0) {
      this.hash = 0;
      this.chunkLength = 0;
      return end;
    }
    this.chunkLength = data.length - chunkStart;
    return -1;
  }

  /**
   * The hot loop: rolls the hash over data[from, to) and returns the index just past the first byte where the
   * masked bits are all zero, or -1. One table load, a shift, an add and a test per byte, all in 32-bit integers;
   * both normalized-chunking phases share it, so V8 optimizes it once with complete type feedback.
   * It runs at ~2 cycles a byte (~1.1 GB/s here), the latency of the dependent shift-add chain: interleaving two
   * chains over the two halves of a span (exact, since the hash only remembers 32 bytes) measured slower in V8.
   */
  private rollUntilMatch(data: Uint8Array, from: number, to: number, mask: number): number {
    const gear = GEAR_TABLE;
    let hash = this.hash;
    for (let i = from; i < to; i++) {
      hash = ((hash << 1) + gear[data[i]!]!) | 0;
      if ((hash & mask) === 0) {
        this.hash = hash;
        return i + 1;
      }
    }
    this.hash = hash;
    return -1;
  }
}

/**
 * BoundaryScanner for aligned chunking (ChunkerOptions.alignment): examines only offsets that are multiples of the
 * alignment from the chunk's start (every chunk but the last is a multiple of it long, so these are multiples from
 * the stream's start too), with the same rule, as if the gear hash had rolled over every byte: its value at an
 * offset depends only on the 32 bytes before it, so only those are hashed. A window reaching back into the
 * previous input buffer takes its bytes from `tail`.
 */
class AlignedBoundaryScanner {
  private chunkLength = 0;
  /** The last HASH_WINDOW bytes of the input before the current buffer, oldest first. */
  private readonly tail = new Uint8Array(HASH_WINDOW);

  constructor(private readonly params: ChunkerParams) {}

  scan(data: Uint8Array, start: number): number {
    const { minSize, normalSize, maxSize, alignment, maskBelowAverage, maskAboveAverage } = this.params;
    const chunkStart = start - this.chunkLength;
    // The first candidate past both `start` (earlier ones were examined with the previous buffer) and minSize.
    let end = chunkStart + (Math.floor((Math.max(start, chunkStart + minSize) - chunkStart) / alignment) + 1) * alignment;
    for (; end <= data.length; end += alignment) {
      const length = end - chunkStart;
      if (length >= maxSize) break;
      if ((this.hashBefore(data, end) & (length <= normalSize ? maskBelowAverage : maskAboveAverage)) === 0) {
        this.chunkLength = 0;
        return end;
      }
    }
    if (end <= data.length) {
      this.chunkLength = 0;
      return chunkStart + maxSize;
    }
    this.chunkLength = data.length - chunkStart;
    this.keepTail(data);
    return -1;
  }

  /** The gear hash of the HASH_WINDOW bytes before data[end] (earlier bits have been shifted out by then). */
  private hashBefore(data: Uint8Array, end: number): number {
    const gear = GEAR_TABLE;
    let hash = 0;
    let i = end - HASH_WINDOW;
    for (; i < 0; i++) hash = ((hash << 1) + gear[this.tail[HASH_WINDOW + i]!]!) | 0;
    for (; i < end; i++) hash = ((hash << 1) + gear[data[i]!]!) | 0;
    return hash;
  }

  private keepTail(data: Uint8Array): void {
    if (data.length >= HASH_WINDOW) {
      this.tail.set(data.subarray(data.length - HASH_WINDOW));
    } else {
      this.tail.copyWithin(0, data.length);
      this.tail.set(data, HASH_WINDOW - data.length);
    }
  }
}

/**
 * The push side of chunking, for callers that receive data rather than iterate it. Feed buffers with push(),
 * which returns the chunks they completed; finish() returns the final partial chunk. A chunk that lies within one
 * input buffer is a view of it, not a copy: a buffer must not be modified once pushed.
 */
export class Chunker {
  private readonly scanner: BoundaryScanner | AlignedBoundaryScanner;
  private pieces: Buffer[] = [];

  /**
   * `allocate` gives the buffer a chunk spanning several input buffers is copied into (default: a new one each
   * time); the upload passes a ChunkArena's.
   */
  constructor(
    options?: ChunkerOptions,
    private readonly allocate: (size: number) => Buffer = (size) => Buffer.allocUnsafe(size),
  ) {
    const params = compileChunkerOptions(options);
    this.scanner = params.alignment > 1 ? new AlignedBoundaryScanner(params) : new BoundaryScanner(params);
  }

  push(input: Uint8Array): Buffer[] {
    const data = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
    const completed: Buffer[] = [];
    let start = 0;
    while (start < data.length) {
      const end = this.scanner.scan(data, start);
      if (end < 0) {
        this.pieces.push(data.subarray(start));
        break;
      }
      this.pieces.push(data.subarray(start, end));
      completed.push(this.takePieces());
      start = end;
    }
    return completed;
  }

  /** The last chunk (shorter than minSize, possibly), or undefined when the stream ended on a boundary. */
  finish(): Buffer | undefined {
    return this.pieces.length > 0 ? this.takePieces() : undefined;
  }

  private takePieces(): Buffer {
    const pieces = this.pieces;
    this.pieces = [];
    if (pieces.length === 1) return pieces[0]!;
    let size = 0;
    for (const piece of pieces) size += piece.length;
    const chunk = this.allocate(size);
    let offset = 0;
    for (const piece of pieces) offset += piece.copy(chunk, offset);
    return chunk;
  }
}

/**
 * Splits a byte stream into content-defined chunks, yielded as they are found; the next input buffer is read only
 * when the consumer asks for more, so a slow upload holds the stream back instead of buffering it. The source must
 * not reuse a buffer once it has yielded it (Node streams never do). Chunks are non-empty; an empty stream yields
 * nothing.
 */
export async function* chunkStream(
  source: ByteSource,
  options?: ChunkerOptions,
  allocate?: (size: number) => Buffer,
): AsyncGenerator<Buffer> {
  // The scanning stays in Chunker's plain methods: inlined into this async generator, V8 ran the hot loop at a
  // third of its speed.
  const chunker = new Chunker(options, allocate);
  for await (const input of source) {
    if (!(input instanceof Uint8Array)) {
      throw new InvalidArgumentError(`chunkStream needs a binary stream, got a chunk of type ${typeof input}`);
    }
    yield* chunker.push(input);
  }
  const last = chunker.finish();
  if (last) yield last;
}

export interface HashedChunk {
  /** The chunk's raw bytes. */
  data: Buffer;
  /** Hex sha256 of `data`: the chunk's address within its container. */
  hash: string;
}

/** Hex sha256 of `data`, computed on libuv's thread pool (WebCrypto's digest), not on the event loop. */
export async function sha256Hex(data: Uint8Array): Promise<string> {
  return Buffer.from(await webcrypto.subtle.digest('SHA-256', data)).toString('hex');
}

export interface HashingOptions {
  /**
   * Chunks hashed at once on libuv's thread pool (WebCrypto) while the event loop goes on chunking. Default 0: each
   * chunk is hashed on the event loop (~1 ms per MiB). Measured on the 2-core machine during uploads, where CPU,
   * not the event loop, is the limit: the thread pool took ~10% more CPU for the same throughput (WebCrypto copies
   * each chunk, which also made V8 collect more often), so the upload hashes on the event loop.
   */
  hashParallelism?: number;
  /** Where a chunk's bytes are copied to (see Chunker). */
  allocate?: (size: number) => Buffer;
}

/** chunkStream, with each chunk's sha256. Chunks come out in stream order. */
export async function* hashedChunks(source: ByteSource, options?: ChunkerOptions, hashing: HashingOptions = {}): AsyncGenerator<HashedChunk> {
  const { hashParallelism = 0, allocate } = hashing;
  const chunks = chunkStream(source, options, allocate);
  if (hashParallelism === 0) {
    for await (const data of chunks) yield { data, hash: createHash('sha256').update(data).digest('hex') };
    return;
  }
  yield* mapOrdered(chunks, hashParallelism, async (data) => ({ data, hash: await sha256Hex(data) }));
}
