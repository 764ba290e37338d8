/**
 * Per-chunk compression, and the rule that decides it (Goiri et al.): compress a chunk only when
 * t_compress + t_upload(compressed) < t_upload(raw). The times are predicted from moving averages of recent
 * measurements, so the decision follows the network and the data: on a fast network or with incompressible
 * memory pages chunks go raw, on a slow network with compressible data they are compressed.
 */
import { promisify } from 'node:util';
import { brotliCompress, brotliDecompress, constants as zlibConstants } from 'node:zlib';
import { IntegrityError, InvalidArgumentError } from '../util/errors.ts';

/**
 * 'brotli' is Node's brotli at quality 1. Node 20 has no zstd or lz4; measured here on 1 MiB chunks of binaries and
 * sources, brotli q1 compresses 2-3× faster than deflate at level 1 with a slightly better ratio, and it gives up on
 * incompressible data at over 1 GiB/s where deflate crawls at 50 MiB/s. Decoding does not depend on the quality.
 */
export const CHUNK_CODECS = ['none', 'brotli'] as const;
export type ChunkCodec = (typeof CHUNK_CODECS)[number];

export function isChunkCodec(value: unknown): value is ChunkCodec {
  return (CHUNK_CODECS as readonly unknown[]).includes(value);
}

const brotliCompressAsync = promisify(brotliCompress);
const brotliDecompressAsync = promisify(brotliDecompress);
const BROTLI_QUALITY = 1;

/** Compression runs on libuv's thread pool, never blocking the event loop for a multi-MiB chunk. */
export async function encodeChunk(codec: ChunkCodec, raw: Buffer): Promise<Buffer> {
  switch (codec) {
    case 'none':
      return raw;
    case 'brotli':
      return brotliCompressAsync(raw, {
        params: {
          [zlibConstants.BROTLI_PARAM_QUALITY]: BROTLI_QUALITY,
          [zlibConstants.BROTLI_PARAM_SIZE_HINT]: raw.length,
        },
      });
  }
}

/**
 * Decodes a stored chunk back to its raw bytes. Output beyond `rawSize` is never produced (a corrupted stream
 * cannot balloon in memory); a stream that does not decode to exactly `rawSize` bytes is an IntegrityError.
 * Callers verify the sha256 of the result and add which container, version and chunk it was.
 */
export async function decodeChunk(codec: ChunkCodec, stored: Buffer, rawSize: number): Promise<Buffer> {
  let raw: Buffer;
  switch (codec) {
    case 'none':
      raw = stored;
      break;
    case 'brotli':
      try {
        raw = await brotliDecompressAsync(stored, { maxOutputLength: Math.max(1, rawSize) });
      } catch (err) {
        throw new IntegrityError(`brotli chunk does not decompress to ${rawSize} bytes: ${String(err)}`, {
          cause: err,
        });
      }
      break;
  }
  if (raw.length !== rawSize) {
    throw new IntegrityError(`${codec} chunk decodes to ${raw.length} bytes, expected ${rawSize}`);
  }
  return raw;
}

/** Why a chunk was or was not compressed. */
export const COMPRESSION_REASONS = [
  /** No compression measured yet: compress to learn speed and ratio. */
  'learning',
  /** Compression was skipped for a while: compress one chunk to refresh the estimates. */
  'resampling',
  /** Upload speed not measured yet, but data compresses: compressing cannot cost much more than it saves. */
  'no-upload-estimate',
  /** The rule predicts that compressing then uploading is faster. */
  'compression-faster',
  /** The rule predicts that uploading raw is faster. */
  'raw-faster',
  /** Recent chunks compressed worse than maxRatio: not worth trying. */
  'incompressible-estimate',
  /** This chunk was compressed but came out worse than maxRatio, so it is stored raw. */
  'incompressible',
] as const;
export type CompressionReason = (typeof COMPRESSION_REASONS)[number];

/** The moving averages a decision was based on; null until first measured. */
export interface CompressionEstimates {
  /** Upload throughput of stored bytes, MiB/s. */
  uploadMiBps: number | null;
  /** Compression throughput of raw bytes, MiB/s. */
  compressMiBps: number | null;
  /** Compressed size / raw size. */
  ratio: number | null;
}

/** One decision and what it was based on: plain data, recordable in the manifest. */
export interface CompressionDecision {
  codec: ChunkCodec;
  reason: CompressionReason;
  estimates: CompressionEstimates;
  /** The rule's two predicted times for this chunk in ms, when both estimates existed. */
  predicted: { rawMs: number; compressedMs: number } | null;
}

export interface CompressionPolicyOptions {
  /** Weight of the newest measurement in each moving average, in (0, 1]. Default 0.2. */
  smoothing?: number;
  /** A chunk is stored compressed only when compressed/raw ≤ this, in (0, 1]. Default 0.95. */
  maxRatio?: number;
  /** After this many chunks in a row not compressed, compress one anyway to refresh the estimates. Default 32. */
  resampleEvery?: number;
}

const DEFAULT_POLICY_OPTIONS: Readonly<Required<CompressionPolicyOptions>> = {
  smoothing: 0.2,
  maxRatio: 0.95,
  resampleEvery: 32,
};

const BYTES_PER_MS_PER_MIBPS = (1024 * 1024) / 1000;

/**
 * Decides per chunk between 'none' and 'brotli'. Feed it measurements: observeUpload after each chunk write,
 * observeCompression after each compression (encodeWithPolicy does that one). Measure both the same way — wall
 * time of one operation, as the pipeline runs them — so the two times it compares are comparable.
 * One policy per agent is enough: the estimates carry over from one checkpoint to the next.
 */
export class CompressionPolicy {
  private readonly options: Readonly<Required<CompressionPolicyOptions>>;
  private uploadBytesPerMs: number | null = null;
  private compressBytesPerMs: number | null = null;
  private ratio: number | null = null;
  private uncompressedStreak = 0;

  constructor(options: CompressionPolicyOptions = {}) {
    const compiled = {
      smoothing: options.smoothing ?? DEFAULT_POLICY_OPTIONS.smoothing,
      maxRatio: options.maxRatio ?? DEFAULT_POLICY_OPTIONS.maxRatio,
      resampleEvery: options.resampleEvery ?? DEFAULT_POLICY_OPTIONS.resampleEvery,
    };
    requireInRange('smoothing', compiled.smoothing, 0, 1);
    requireInRange('maxRatio', compiled.maxRatio, 0, 1);
    if (!Number.isSafeInteger(compiled.resampleEvery) || compiled.resampleEvery < 1) {
      throw new InvalidArgumentError(
        `compression policy option resampleEvery must be a positive integer, got ${compiled.resampleEvery}`,
      );
    }
    this.options = compiled;
  }

  get maxRatio(): number {
    return this.options.maxRatio;
  }

  /** A decision for the next chunk of `chunkSize` raw bytes. Counts skipped chunks toward the next resample. */
  decide(chunkSize: number): CompressionDecision {
    const decision = this.evaluate(chunkSize);
    this.uncompressedStreak = decision.codec === 'none' ? this.uncompressedStreak + 1 : 0;
    return decision;
  }

  /** `bytes` stored bytes were uploaded in `ms` milliseconds. */
  observeUpload(bytes: number, ms: number): void {
    const rate = measuredRate(bytes, ms);
    if (rate !== null) this.uploadBytesPerMs = this.average(this.uploadBytesPerMs, rate);
  }

  /** `rawBytes` compressed to `compressedBytes` in `ms` milliseconds. */
  observeCompression(rawBytes: number, compressedBytes: number, ms: number): void {
    const rate = measuredRate(rawBytes, ms);
    if (rate === null) return;
    if (!Number.isFinite(compressedBytes) || compressedBytes < 0) {
      throw new InvalidArgumentError(`compressedBytes must be a non-negative number, got ${compressedBytes}`);
    }
    this.compressBytesPerMs = this.average(this.compressBytesPerMs, rate);
    this.ratio = this.average(this.ratio, compressedBytes / rawBytes);
  }

  estimates(): CompressionEstimates {
    return {
      uploadMiBps: this.uploadBytesPerMs === null ? null : this.uploadBytesPerMs / BYTES_PER_MS_PER_MIBPS,
      compressMiBps: this.compressBytesPerMs === null ? null : this.compressBytesPerMs / BYTES_PER_MS_PER_MIBPS,
      ratio: this.ratio,
    };
  }

  private evaluate(chunkSize: number): CompressionDecision {
    const estimates = this.estimates();
    const decision = (
      codec: ChunkCodec,
      reason: CompressionReason,
      predicted: CompressionDecision['predicted'] = null,
    ): CompressionDecision => ({ codec, reason, estimates, predicted });

    if (this.compressBytesPerMs === null || this.ratio === null) return decision('brotli', 'learning');
    if (this.uncompressedStreak >= this.options.resampleEvery) return decision('brotli', 'resampling');
    if (this.ratio > this.options.maxRatio) return decision('none', 'incompressible-estimate');
    if (this.uploadBytesPerMs === null) return decision('brotli', 'no-upload-estimate');

    const rawMs = chunkSize / this.uploadBytesPerMs;
    const compressedMs = chunkSize / this.compressBytesPerMs + (chunkSize * this.ratio) / this.uploadBytesPerMs;
    const predicted = { rawMs, compressedMs };
    return compressedMs < rawMs
      ? decision('brotli', 'compression-faster', predicted)
      : decision('none', 'raw-faster', predicted);
  }

  private average(previous: number | null, sample: number): number {
    return previous === null ? sample : previous + this.options.smoothing * (sample - previous);
  }
}

function requireInRange(field: keyof CompressionPolicyOptions, value: number, above: number, atMost: number) {
  if (!(typeof value === 'number' && value > above && value <= atMost)) {
    throw new InvalidArgumentError(
      `compression policy option ${field} must be in (${above}, ${atMost}], got ${String(value)}`,
    );
  }
}

/** Bytes per ms; null for an empty transfer, which says nothing about speed. */
function measuredRate(bytes: number, ms: number): number | null {
  if (!Number.isFinite(bytes) || bytes < 0 || !Number.isFinite(ms) || ms < 0) {
    throw new InvalidArgumentError(`a measurement needs non-negative bytes and ms, got ${bytes} bytes in ${ms} ms`);
  }
  // Timers are coarse: a tiny chunk can appear to take 0 ms. Clamp to one microsecond rather than divide by 0.
  return bytes === 0 ? null : bytes / Math.max(ms, 0.001);
}

export interface EncodedChunk {
  codec: ChunkCodec;
  /** The bytes to store: `raw` itself when codec is 'none'. */
  stored: Buffer;
  rawSize: number;
  decision: CompressionDecision;
}

/**
 * Times operations that may overlap (see BusyClock in pipeline.ts): begin() as one starts, end() as it ends,
 * returning the ms it accounts for at the aggregate rate.
 */
export interface OperationClock {
  begin(): void;
  end(): number;
}

/**
 * Asks the policy, compresses when it says so, and reports the compression's time and ratio back to it. A chunk
 * that compresses worse than maxRatio is stored raw (decompressing it later would cost time for nothing).
 * When several chunks are compressed at once, pass one `clock` shared by them: the policy then learns the
 * aggregate compression rate, comparable with an aggregate upload rate; without it, the wall time of this one
 * compression is reported.
 */
export async function encodeWithPolicy(raw: Buffer, policy: CompressionPolicy, clock?: OperationClock): Promise<EncodedChunk> {
  const decision = policy.decide(raw.length);
  if (decision.codec === 'none') return { codec: 'none', stored: raw, rawSize: raw.length, decision };

  const started = performance.now();
  clock?.begin();
  let compressed: Buffer;
  try {
    compressed = await encodeChunk(decision.codec, raw);
  } catch (err) {
    clock?.end(); // the clock counts running operations: a failed one has ended too
    throw err;
  }
  const ms = clock ? clock.end() : performance.now() - started;
  policy.observeCompression(raw.length, compressed.length, ms);
  if (compressed.length > raw.length * policy.maxRatio) {
    const storedRaw: CompressionDecision = { ...decision, codec: 'none', reason: 'incompressible' };
    return { codec: 'none', stored: raw, rawSize: raw.length, decision: storedRaw };
  }
  return { codec: decision.codec, stored: compressed, rawSize: raw.length, decision };
}

/** What a version's compression decisions came to: the manifest's record of them. */
export interface CompressionSummary {
  /** Chunks decided, per reason (only reasons that occurred). */
  reasons: Partial<Record<CompressionReason, number>>;
  /** Raw bytes of the chunks decided. */
  rawBytes: number;
  /** Bytes stored for them. */
  storedBytes: number;
  /** The estimates behind the last decision; null when no chunk needed one (all were already stored). */
  lastEstimates: CompressionEstimates | null;
}

/** Accumulates one version's decisions into its CompressionSummary. */
export class CompressionTally {
  private readonly reasons: Partial<Record<CompressionReason, number>> = {};
  private rawBytes = 0;
  private storedBytes = 0;
  private lastEstimates: CompressionEstimates | null = null;

  add(encoded: EncodedChunk): void {
    const { reason, estimates } = encoded.decision;
    this.reasons[reason] = (this.reasons[reason] ?? 0) + 1;
    this.rawBytes += encoded.rawSize;
    this.storedBytes += encoded.stored.length;
    this.lastEstimates = estimates;
  }

  summary(): CompressionSummary {
    return {
      reasons: { ...this.reasons },
      rawBytes: this.rawBytes,
      storedBytes: this.storedBytes,
      lastEstimates: this.lastEstimates,
    };
  }
}
