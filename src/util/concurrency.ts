import { TimeoutError } from './errors.ts';

/**
 * Runs `task` over `items` with at most `limit` running at once, preserving order in the results. The first
 * failure rejects the whole call once the tasks already running have settled (none is left dangling).
 */
export async function mapBounded<T, R>(items: readonly T[], limit: number, task: (item: T, index: number) => Promise<R>): Promise<R[]> {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`limit must be a positive integer, got ${limit}`);
  const results = new Array<R>(items.length);
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (failure === undefined && next < items.length) {
      const index = next++;
      try {
        results[index] = await task(items[index]!, index);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.error;
  return results;
}

/**
 * A counting semaphore: at most `limit` holders at once, the rest wait in arrival order. Shared by everything
 * an agent sends to one resource (its Cassandra session), it bounds that resource's load across all callers.
 */
export class Semaphore {
  private holders = 0;
  private readonly queue: Array<() => void> = [];

  constructor(readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`semaphore limit must be a positive integer, got ${limit}`);
  }

  /** Holders now. */
  get inUse(): number {
    return this.holders;
  }

  /** Callers waiting for a slot: the queue depth. */
  get waiting(): number {
    return this.queue.length;
  }

  /** Runs `task` once a slot is free, and frees the slot when it settles. */
  async use<T>(task: () => Promise<T>): Promise<T> {
    if (this.holders >= this.limit) await new Promise<void>((resolve) => this.queue.push(resolve));
    else this.holders++;
    try {
      return await task();
    } finally {
      // Hand the slot straight to the next waiter, so a newcomer cannot overtake the queue.
      const next = this.queue.shift();
      if (next) next();
      else this.holders--;
    }
  }
}

/**
 * Waits for `promise` at most `timeoutMs`, then rejects with a TimeoutError naming `what`. The promise itself goes
 * on (it cannot be cancelled from here); its outcome is then ignored.
 */
export async function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what} did not finish within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}
