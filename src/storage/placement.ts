import { FailedPreconditionError, InvalidArgumentError } from '../util/errors.ts';

/**
 * Where a container's snapshot data lives on the token ring.
 *
 * A container's manifests sit in its home partition (partition key = the container name). Its chunks sit in
 * bucket partitions (partition key = container name + bucket number) whose tokens are chosen to fall in the
 * same token range as the home partition, so every chunk has exactly the home partition's replicas: the
 * container's snapshots survive exactly when one of its two replica hosts survives (LXCloud-CR's semantics),
 * the first live replica restores from its own disk, and no partition has to hold a whole multi-GB dump.
 *
 * When the ring changes (a host added or removed), ranges split or merge: buckets chosen before may then
 * fall in a neighbouring range. New versions place new chunks in buckets chosen against the new ring, and
 * {@link isColocated} tells which old buckets to rewrite to restore co-location.
 */

/** The slice of the driver's token map placement needs; the real one is the driver's `client.metadata`. */
export interface TokenMap {
  newToken(routingKey: Buffer): Token;
  getTokenRanges(): Set<TokenRange>;
}

export interface Token {
  compare(other: Token): number;
  equals(other: Token): boolean;
}

export interface TokenRange {
  contains(token: Token): boolean;
}

/** Bucket numbers are searched up to this bound; with N hosts about N tries find one co-located bucket. */
const MAX_BUCKET_SEARCH = 1 << 20;

/** The routing key of a single text partition key: its UTF-8 bytes. */
export function homeRoutingKey(container: string): Buffer {
  return Buffer.from(container, 'utf8');
}

/**
 * The routing key of the composite partition key (container text, bucket int), as Cassandra serializes it
 * for hashing: each component as a 2-byte length, its bytes and a 0 byte.
 */
export function bucketRoutingKey(container: string, bucket: number): Buffer {
  if (!Number.isInteger(bucket) || bucket < 0 || bucket > 0x7fffffff) {
    throw new InvalidArgumentError(`bucket must be an integer from 0 to 2^31-1, got ${bucket}`);
  }
  const name = Buffer.from(container, 'utf8');
  const number = Buffer.alloc(4);
  number.writeInt32BE(bucket);
  return Buffer.concat([component(name), component(number)]);
}

function component(bytes: Buffer): Buffer {
  const header = Buffer.alloc(2);
  header.writeUInt16BE(bytes.length);
  return Buffer.concat([header, bytes, Buffer.from([0])]);
}

/** The token range holding a container's home partition. */
export function homeRange(tokens: TokenMap, container: string): TokenRange {
  const home = tokens.newToken(homeRoutingKey(container));
  for (const range of tokens.getTokenRanges()) {
    if (range.contains(home)) return range;
  }
  throw new FailedPreconditionError('the driver has no token map yet: connect with metadata sync enabled first');
}

/** Whether a bucket of a container lies in the container's home range (and so on its replicas). */
export function isColocated(tokens: TokenMap, container: string, bucket: number, range = homeRange(tokens, container)): boolean {
  return range.contains(tokens.newToken(bucketRoutingKey(container, bucket)));
}

/**
 * The first `count` bucket numbers greater than `after` that are co-located with the container's home
 * partition, in increasing order.
 */
export function colocatedBuckets(tokens: TokenMap, container: string, count: number, after = -1): number[] {
  const range = homeRange(tokens, container);
  const found: number[] = [];
  for (let bucket = after + 1; found.length < count; bucket++) {
    if (bucket > MAX_BUCKET_SEARCH) {
      throw new FailedPreconditionError(`no bucket of ${container} falls in its home range among the first ${MAX_BUCKET_SEARCH}`);
    }
    if (isColocated(tokens, container, bucket, range)) found.push(bucket);
  }
  return found;
}
