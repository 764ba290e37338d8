import cassandra from 'cassandra-driver';

const { responseErrorCodes, consistencies } = cassandra.types;

/**
 * Whether `error` is a Paxos round that timed out: a CAS write timeout, or a SERIAL read timeout. Under
 * contention (several writers racing for the same partition) Cassandra answers this way instead of "not
 * applied"; the outcome of a timed-out CAS is unknown, so the caller must re-read before deciding anything.
 * The driver's default retry policy does not retry these (it cannot know the statement is safe to repeat).
 */
export function isPaxosTimeout(error: unknown): boolean {
  if (!(error instanceof cassandra.errors.ResponseError)) return false;
  const detail = error as cassandra.errors.ResponseError & { writeType?: string; consistencies?: number };
  const code: number = error.code;
  if (code === Number(responseErrorCodes.writeTimeout)) return detail.writeType === 'CAS';
  if (code === Number(responseErrorCodes.readTimeout)) {
    return detail.consistencies === consistencies.serial || detail.consistencies === consistencies.localSerial;
  }
  return false;
}

/**
 * Backoff before the next attempt of a lightweight transaction that lost a race or timed out: exponential with
 * full jitter, so racing writers spread out instead of colliding again in lock step.
 */
export function contentionBackoffMs(attempt: number, baseMs = 20, capMs = 1000): number {
  return Math.random() * Math.min(capMs, baseMs * 2 ** attempt);
}

/**
 * Whether `error` says the replicas a consistency level needs are not up or did not answer (a host is down),
 * as opposed to a bad query: the cue for a read to fall back to a lower level.
 */
export function isReplicaUnavailable(error: unknown): boolean {
  // Our own UnavailableError wraps the driver's error as its cause.
  if (error instanceof Error && error.cause !== undefined && isReplicaUnavailable(error.cause)) return true;
  if (error instanceof cassandra.errors.NoHostAvailableError || error instanceof cassandra.errors.OperationTimedOutError) return true;
  if (!(error instanceof cassandra.errors.ResponseError)) return false;
  const code: number = error.code;
  return [responseErrorCodes.unavailableException, responseErrorCodes.readTimeout, responseErrorCodes.writeTimeout].map(Number).includes(code);
}

/**
 * Runs a read at `preferred` consistency and, when the replicas that needs are not available, again at ONE: a
 * read that should see every replica when it can, and must still work with only one alive.
 */
export async function readWithFallback<T>(read: (consistency: number) => Promise<T>, preferred: number): Promise<T> {
  try {
    return await read(preferred);
  } catch (error) {
    if (!isReplicaUnavailable(error)) throw error;
    return read(consistencies.one);
  }
}
