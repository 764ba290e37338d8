/**
 * A version's manifest: everything needed to rebuild a snapshot from its chunks, and the record of how it was
 * made. Writing it commits the version, so it is written only after every chunk it names is durable.
 *
 * Wire format (msgpack): the array [MANIFEST_MAGIC, formatVersion, body, sha256(body)], where body is the msgpack
 * map of a VersionManifest. The format version sits outside the body so that an agent meeting a newer manifest
 * says so rather than misreading it; the checksum makes any stored corruption an IntegrityError instead of a
 * plausible but wrong manifest. Decoding then validates every field, so even a well-formed manifest with a bad
 * value (a path escaping the snapshot directory, sizes that do not add up) is refused before restore trusts it.
 */
import { createHash } from 'node:crypto';
import { Packr } from 'msgpackr';
import {
  CHUNK_CODECS,
  COMPRESSION_REASONS,
  type ChunkCodec,
  type CompressionEstimates,
  type CompressionSummary,
  isChunkCodec,
} from './codec.ts';
import { FailedPreconditionError, IntegrityError } from '../util/errors.ts';
import { KEY_ID, SEAL_OVERHEAD } from './encryption.ts';

export const MANIFEST_MAGIC = 'lxcr-manifest';
/**
 * 2 added ChunkRef.keyId (encrypted chunks). A manifest without encrypted chunks is still written as 1, so agents
 * that predate encryption keep reading it; one with them is 2, which such an agent refuses with "upgrade the agent".
 */
export const MANIFEST_FORMAT_VERSION = 2;

/** One chunk of a file, in file order. */
export interface ChunkRef {
  /** Hex sha256 of the chunk's raw bytes: its address within the container. */
  hash: string;
  /** Raw size in bytes. */
  size: number;
  /** Size as stored, after the codec. */
  storedSize: number;
  codec: ChunkCodec;
  /** The bucket (partition) of the container's chunk table that holds the chunk. */
  bucket: number;
  /**
   * The id of the key the stored bytes are encrypted with (see encryption.ts); absent for a chunk stored in clear.
   * storedSize then includes the nonce and tag.
   */
  keyId?: string;
}

/**
 * One file of the snapshot: a CRIU image, the LXC config, or the rootfs as a tar stream. A snapshot is the set of
 * these files, restored under one directory; its content is the concatenation of its chunks.
 */
export interface SnapshotFile {
  /** Relative to the snapshot directory, '/'-separated, never absolute or containing '..'. */
  path: string;
  /** Permission bits (0 to 0o7777). */
  mode: number;
  /** Raw size in bytes: the sum of the chunk sizes. */
  size: number;
  chunks: ChunkRef[];
}

/** Wall times of the checkpoint's steps, in ms. */
export interface ManifestTimings {
  /** The container was frozen this long. */
  freezeMs: number;
  /** Writing the dump to local staging, freeze included. */
  dumpMs: number;
  /** Chunking, compressing and uploading the chunks not already stored. */
  uploadMs: number;
  /** From the start of the checkpoint to the manifest being ready to write. */
  totalMs: number;
}

export interface VersionManifest {
  container: string;
  /** Per container, from 1. */
  version: number;
  /** The agent's host id: where the checkpoint was taken. */
  sourceHost: string;
  /** When the checkpoint started, ms since the epoch. */
  createdAt: number;
  /** When all chunks were durable, ms since the epoch. */
  committedAt: number;
  files: SnapshotFile[];
  /** snapshotSha256(files): identifies the snapshot's whole content. */
  snapshotSha256: string;
  compression: CompressionSummary;
  timings: ManifestTimings;
}

/** A manifest written by a newer agent than this one; upgrading this agent is the fix. */
export class UnsupportedManifestVersionError extends FailedPreconditionError {
  constructor(readonly formatVersion: number) {
    super(
      `manifest format version ${formatVersion} is newer than this agent supports (${MANIFEST_FORMAT_VERSION}): ` +
        'upgrade the agent to read it',
    );
  }
}

/**
 * The sha256 of the snapshot's content, computed from the file list rather than from the bytes: each chunk's
 * hash already covers its bytes, so hashing the ordered list of files (path, mode, size) and their chunks
 * (hash, size) covers every byte, and costs nothing to recompute on restore from the chunks actually verified.
 * Canonical form hashed: per file the line `file <mode octal> <size> <JSON path>`, then per chunk
 * `chunk <hash> <size>`, each line ending in '\n'. Codec, stored size and bucket are storage details, not content.
 */
export function snapshotSha256(files: readonly SnapshotFile[]): string {
  const digest = createHash('sha256');
  for (const file of files) {
    digest.update(`file ${file.mode.toString(8)} ${file.size} ${JSON.stringify(file.path)}\n`);
    for (const chunk of file.chunks) digest.update(`chunk ${chunk.hash} ${chunk.size}\n`);
  }
  return digest.digest('hex');
}

// Plain msgpack maps (no msgpackr records): any msgpack reader can inspect a stored manifest.
const packr = new Packr({ useRecords: false, mapsAsObjects: true });

/** Validates (a bug writing a bad manifest fails here, not at restore) and encodes. */
export function encodeManifest(manifest: VersionManifest): Buffer {
  validateManifest(manifest);
  const body = packr.pack(manifest);
  const encrypted = manifest.files.some((file) => file.chunks.some((chunk) => chunk.keyId !== undefined));
  return packr.pack([MANIFEST_MAGIC, encrypted ? MANIFEST_FORMAT_VERSION : 1, body, sha256(body)]);
}

/**
 * Decodes and validates. Throws IntegrityError naming what is wrong for anything corrupted, truncated or
 * inconsistent, and UnsupportedManifestVersionError for a format newer than this agent's.
 */
export function decodeManifest(encoded: Uint8Array): VersionManifest {
  const envelope = unpack(encoded, 'manifest');
  if (!Array.isArray(envelope) || envelope.length !== 4 || envelope[0] !== MANIFEST_MAGIC) {
    throw new IntegrityError(
      `not an LXCloud-CR manifest: expected [${JSON.stringify(MANIFEST_MAGIC)}, version, body, checksum]`,
    );
  }
  const [, formatVersion, body, checksum] = envelope as unknown[];
  if (!Number.isSafeInteger(formatVersion) || (formatVersion as number) < 1) {
    throw new IntegrityError(`manifest format version is ${JSON.stringify(formatVersion)}, not a positive integer`);
  }
  if ((formatVersion as number) > MANIFEST_FORMAT_VERSION) {
    throw new UnsupportedManifestVersionError(formatVersion as number);
  }
  if (!(body instanceof Uint8Array) || !(checksum instanceof Uint8Array)) {
    throw new IntegrityError('manifest body or checksum is not binary');
  }
  if (!sha256(body).equals(checksum)) {
    throw new IntegrityError('manifest checksum mismatch: the stored manifest is corrupted');
  }
  const manifest = unpack(body, 'manifest body');
  validateManifest(manifest);
  return manifest;
}

function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

function unpack(data: Uint8Array, what: string): unknown {
  try {
    return packr.unpack(data);
  } catch (err) {
    throw new IntegrityError(`${what} is not valid msgpack (truncated or corrupted): ${String(err)}`, { cause: err });
  }
}

// Validation. Each check names the field by its path (files[2].chunks[7].hash) so the error says what is wrong.

const SHA256_HEX = /^[0-9a-f]{64}$/;

function validateManifest(value: unknown): asserts value is VersionManifest {
  const manifest = record(value, 'manifest', [
    'container',
    'version',
    'sourceHost',
    'createdAt',
    'committedAt',
    'files',
    'snapshotSha256',
    'compression',
    'timings',
  ]);
  nonEmptyString(manifest.container, 'container');
  count(manifest.version, 'version', 1);
  nonEmptyString(manifest.sourceHost, 'sourceHost');
  const createdAt = nonNegative(manifest.createdAt, 'createdAt');
  const committedAt = nonNegative(manifest.committedAt, 'committedAt');
  if (committedAt < createdAt) fail('committedAt', `is before createdAt (${committedAt} < ${createdAt})`);
  const files = list(manifest.files, 'files');
  const paths = new Set<string>();
  files.forEach((file, i) => {
    const path = validateFile(file, `files[${i}]`);
    if (paths.has(path)) fail(`files[${i}].path`, `repeats ${JSON.stringify(path)}`);
    paths.add(path);
  });
  if (!matches(manifest.snapshotSha256, SHA256_HEX)) fail('snapshotSha256', 'is not a hex sha256');
  const expected = snapshotSha256(files as SnapshotFile[]);
  if (manifest.snapshotSha256 !== expected) fail('snapshotSha256', `does not match the file list (${expected})`);
  validateCompression(manifest.compression, 'compression');
  const timings = record(manifest.timings, 'timings', ['freezeMs', 'dumpMs', 'uploadMs', 'totalMs']);
  for (const [key, ms] of Object.entries(timings)) nonNegative(ms, `timings.${key}`);
}

function validateFile(value: unknown, at: string): string {
  const file = record(value, at, ['path', 'mode', 'size', 'chunks']);
  const path = nonEmptyString(file.path, `${at}.path`);
  const hasOddSegment = path.split('/').some((part) => part === '' || part === '.' || part === '..');
  if (hasOddSegment || path.includes('\0')) fail(`${at}.path`, `${JSON.stringify(path)} is not a plain relative path`);
  const mode = count(file.mode, `${at}.mode`, 0);
  if (mode > 0o7777) fail(`${at}.mode`, `${mode.toString(8)} has bits beyond the permission bits`);
  const size = count(file.size, `${at}.size`, 0);
  let chunkTotal = 0;
  list(file.chunks, `${at}.chunks`).forEach((chunk, i) => {
    chunkTotal += validateChunk(chunk, `${at}.chunks[${i}]`);
  });
  if (chunkTotal !== size) fail(`${at}.size`, `is ${size} but its chunks add up to ${chunkTotal}`);
  return path;
}

/** Returns the chunk's raw size. */
function validateChunk(value: unknown, at: string): number {
  const chunk = record(value, at, ['hash', 'size', 'storedSize', 'codec', 'bucket'], { optional: ['keyId'] });
  if (!matches(chunk.hash, SHA256_HEX)) fail(`${at}.hash`, 'is not a hex sha256');
  const size = count(chunk.size, `${at}.size`, 1);
  const storedSize = count(chunk.storedSize, `${at}.storedSize`, 1);
  if (!isChunkCodec(chunk.codec)) {
    fail(`${at}.codec`, `is ${JSON.stringify(chunk.codec)}, not one of ${CHUNK_CODECS.join(', ')}`);
  }
  if (chunk.keyId !== undefined && !matches(chunk.keyId, KEY_ID)) fail(`${at}.keyId`, 'is not 16 hex digits');
  const overhead = chunk.keyId === undefined ? 0 : SEAL_OVERHEAD;
  if (chunk.codec === 'none' && storedSize !== size + overhead) {
    fail(`${at}.storedSize`, `is ${storedSize} for a raw chunk of ${size} bytes${overhead ? ' encrypted' : ''}`);
  }
  count(chunk.bucket, `${at}.bucket`, 0);
  return size;
}

function validateCompression(value: unknown, at: string): void {
  const summary = record(value, at, ['reasons', 'rawBytes', 'storedBytes', 'lastEstimates']);
  const reasons = record(summary.reasons, `${at}.reasons`, COMPRESSION_REASONS, { optionalKeys: true });
  for (const [reason, n] of Object.entries(reasons)) count(n, `${at}.reasons.${reason}`, 0);
  count(summary.rawBytes, `${at}.rawBytes`, 0);
  count(summary.storedBytes, `${at}.storedBytes`, 0);
  if (summary.lastEstimates !== null) {
    const keys: readonly (keyof CompressionEstimates)[] = ['uploadMiBps', 'compressMiBps', 'ratio'];
    const estimates = record(summary.lastEstimates, `${at}.lastEstimates`, keys);
    for (const key of keys) {
      if (estimates[key] !== null) nonNegative(estimates[key], `${at}.lastEstimates.${key}`);
    }
  }
}

function fail(at: string, problem: string): never {
  throw new IntegrityError(`manifest field ${at} ${problem}`);
}

/**
 * A plain object with exactly `keys` (or a subset of them when optionalKeys), and any of `optional`: unknown keys
 * are refused.
 */
function record<K extends string, O extends string = never>(
  value: unknown,
  at: string,
  keys: readonly K[],
  { optionalKeys = false, optional = [] as readonly O[] } = {},
): Record<K, unknown> & Partial<Record<O, unknown>> {
  if (typeof value !== 'object' || value === null || Array.isArray(value) || value instanceof Uint8Array) {
    fail(at, 'is not a map');
  }
  const allowed = new Set<string>([...keys, ...optional]);
  for (const key of Object.keys(value)) {
    if (!allowed.has(key)) fail(at, `has unknown key ${JSON.stringify(key)}`);
  }
  if (!optionalKeys) {
    for (const key of keys) if (!Object.hasOwn(value, key)) fail(`${at}.${key}`, 'is missing');
  }
  return value as Record<K, unknown> & Partial<Record<O, unknown>>;
}

function list(value: unknown, at: string): unknown[] {
  if (!Array.isArray(value)) fail(at, 'is not a list');
  return value;
}

function nonEmptyString(value: unknown, at: string): string {
  if (typeof value !== 'string' || value === '') fail(at, 'is not a non-empty string');
  return value;
}

function count(value: unknown, at: string, least: number): number {
  if (!Number.isSafeInteger(value) || (value as number) < least) {
    fail(at, `is ${JSON.stringify(value)}, not an integer ≥ ${least}`);
  }
  return value as number;
}

function nonNegative(value: unknown, at: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    fail(at, `is ${JSON.stringify(value)}, not a non-negative number`);
  }
  return value;
}

function matches(value: unknown, pattern: RegExp): value is string {
  return typeof value === 'string' && pattern.test(value);
}

/** A version's sizes: raw bytes of its files, and bytes stored for its distinct chunks (after compression). */
export function manifestSizes(manifest: VersionManifest): { logicalBytes: number; storedBytes: number; chunks: number } {
  const distinct = new Map<string, number>();
  let logicalBytes = 0;
  for (const file of manifest.files) {
    logicalBytes += file.size;
    for (const chunk of file.chunks) distinct.set(chunk.hash, chunk.storedSize);
  }
  let storedBytes = 0;
  for (const size of distinct.values()) storedBytes += size;
  return { logicalBytes, storedBytes, chunks: distinct.size };
}
