/**
 * Building blocks of the upload pipeline: stages that run ahead of their consumer within fixed bounds, so reading,
 * chunking, hashing and compressing overlap the chunk writes instead of alternating with them, while the memory
 * held stays a few chunks whatever the size of the dump.
 */

/** An async iterable that also says how many of its items are ready to be taken without waiting. */
export interface ReadAhead<T> extends AsyncIterable<T> {
  /** Items produced and not yet taken. */
  readonly buffered: number;
  /** Their total size (as measured by `sizeOf`). */
  readonly bufferedBytes: number;
}

export interface ReadAheadOptions<T> {
  /** At most this many items are held ready (at least 1). */
  maxItems: number;
  /**
   * The source is pulled only while fewer than this many bytes (as measured by `sizeOf`) are held ready, so at most
   * this plus one item are held, and an item larger than the bound still passes. Default: no byte bound.
   */
  maxBytes?: number;
  sizeOf?: (item: T) => number;
}

/**
 * Pulls `source` in the background, ahead of the consumer, holding at most `maxItems` items (and about `maxBytes`
 * bytes) that the consumer has not taken yet; when a bound is reached, the source is not pulled until the consumer takes
 * one. Items come out in order; an error of the source comes out after the items produced before it.
 *
 * The source is pulled from the moment this is called. Iterate the result exactly once and to the end or until a
 * `break`/throw: leaving the loop stops the background pulling, closes the source (its `return()`) and waits
 * until the source's current step has settled, so nothing of the source still runs once the loop is left.
 */
export function readAhead<T>(source: AsyncIterable<T> | Iterable<T>, options: ReadAheadOptions<T>): ReadAhead<T> {
  const { maxItems } = options;
  const maxBytes = options.maxBytes ?? Number.POSITIVE_INFINITY;
  const sizeOf = options.sizeOf ?? (() => 0);
  if (!Number.isInteger(maxItems) || maxItems < 1) throw new RangeError(`maxItems must be a positive integer, got ${maxItems}`);
  if (!(maxBytes > 0)) throw new RangeError(`maxBytes must be positive, got ${maxBytes}`);

  const queue: Array<{ item: T; size: number }> = [];
  let queuedBytes = 0;
  let ended = false;
  let failure: { error: unknown } | undefined;
  let stopped = false;
  // One waiter at a time on each side: the consumer waiting for an item, the pump waiting for room.
  let wakeConsumer: (() => void) | undefined;
  let wakePump: (() => void) | undefined;
  const signalConsumer = () => {
    const wake = wakeConsumer;
    wakeConsumer = undefined;
    wake?.();
  };
  const signalPump = () => {
    const wake = wakePump;
    wakePump = undefined;
    wake?.();
  };
  const full = () => queue.length >= maxItems || (queue.length > 0 && queuedBytes >= maxBytes);

  const iterator: AsyncIterator<T> | Iterator<T> =
    Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : source[Symbol.iterator]();

  const pump = (async () => {
    try {
      while (!stopped) {
        while (full() && !stopped) await new Promise<void>((resolve) => (wakePump = resolve));
        if (stopped) break;
        const step = await iterator.next();
        if (step.done) return;
        const size = sizeOf(step.value);
        queue.push({ item: step.value, size });
        queuedBytes += size;
        signalConsumer();
      }
      // Stopped by the consumer before the source ended: close it (a generator's finally blocks run).
      await iterator.return?.();
    } catch (error) {
      failure = { error };
    } finally {
      ended = true;
      signalConsumer();
    }
  })();

  async function* consume(): AsyncGenerator<T> {
    try {
      for (;;) {
        const next = queue.shift();
        if (next) {
          queuedBytes -= next.size;
          signalPump();
          yield next.item;
          continue;
        }
        if (ended) {
          if (failure) throw failure.error;
          return;
        }
        await new Promise<void>((resolve) => (wakeConsumer = resolve));
      }
    } finally {
      stopped = true;
      signalPump();
      await pump;
      queue.length = 0;
      queuedBytes = 0;
    }
  }

  const consumer = consume();
  return {
    [Symbol.asyncIterator]: () => consumer,
    get buffered() {
      return queue.length;
    },
    get bufferedBytes() {
      return queuedBytes;
    },
  };
}

/**
 * Maps `source` through `task` with at most `limit` tasks running at once, yielding the results in the source's
 * order. Each task is started in the source's order, so a task may rely on the tasks of earlier items having
 * started. When the consumer stops early or a task fails, the tasks still running are waited for (their results
 * dropped) before the generator finishes: none is left running behind its back.
 */
export async function* mapOrdered<T, R>(
  source: AsyncIterable<T> | Iterable<T>,
  limit: number,
  task: (item: T) => R | Promise<R>,
): AsyncGenerator<R> {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`limit must be a positive integer, got ${limit}`);
  const running: Array<Promise<R>> = [];
  const start = (item: T) => {
    // Started synchronously (a synchronous throw becomes a rejection), so tasks start in the source's order.
    const result = new Promise<R>((resolve) => resolve(task(item)));
    // Observed here so that a failure of a task not yet awaited is not reported as unhandled.
    result.catch(() => undefined);
    running.push(result);
  };
  try {
    for await (const item of source) {
      start(item);
      if (running.length >= limit) yield await running.shift()!;
    }
    while (running.length > 0) yield await running.shift()!;
  } finally {
    await Promise.allSettled(running);
  }
}

/**
 * Turns per-operation wall times into the time each operation accounts for at the aggregate rate when several run
 * at once: with n operations overlapping, one finishes about every 1/n of a single operation's time, and the rate
 * of the stage is bytes per that interval, not per whole operation. Measures time while at least one operation
 * runs; idle time in between does not count.
 */
export class BusyClock {
  private running = 0;
  private mark = 0;

  constructor(private readonly now: () => number = () => performance.now()) {}

  /** An operation starts. */
  begin(): void {
    if (this.running++ === 0) this.mark = this.now();
  }

  /** An operation ends: the busy time since the previous end (or since the busy period began), in ms. */
  end(): number {
    if (this.running === 0) throw new RangeError('BusyClock.end() without a matching begin()');
    this.running--;
    const now = this.now();
    const elapsed = now - this.mark;
    this.mark = now;
    return elapsed;
  }
}

/**
 * A ring of memory that chunk bytes are copied into, instead of a fresh buffer per chunk. Chunks live for a few
 * hundred ms (read-ahead, registration, the put), long enough for V8 to promote their buffers, and a fresh multi-MiB
 * buffer per chunk made V8 run a full mark-compact every few MiB of upload (~50 per 256 MiB, twice as much GC time
 * as the bare driver loop). Ring slots are handed out in order and come back roughly in order, as chunks finish.
 *
 * `allocate` returns a view into the ring, or a plain new buffer when the ring has no room (so a slow consumer
 * never blocks on it and correctness never depends on its size). `release` hands a view back once nothing will
 * read it any more (ignored for a buffer that is not the ring's); space is reused once every slot before it came
 * back too. A released view must not be read or written again: its bytes will be overwritten.
 */
export class ChunkArena {
  private ring: Buffer | undefined;
  /** Live slots in allocation order: [start, end), released or not. */
  private readonly slots: Array<{ start: number; end: number; released: boolean }> = [];
  private readonly byStart = new Map<number, { start: number; end: number; released: boolean }>();
  private tail = 0;
  /** Allocations that did not fit and got their own buffer. */
  fallbacks = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`arena capacity must be a positive integer, got ${capacity}`);
  }

  allocate(size: number): Buffer {
    const start = this.place(size);
    if (start < 0) {
      this.fallbacks++;
      return Buffer.allocUnsafeSlow(size);
    }
    // Allocated on first use: a small upload never touches (or maps) the whole ring.
    this.ring ??= Buffer.allocUnsafeSlow(this.capacity);
    const slot = { start, end: start + size, released: false };
    this.slots.push(slot);
    this.byStart.set(start, slot);
    this.tail = slot.end;
    return this.ring.subarray(start, slot.end);
  }

  release(view: Uint8Array): void {
    if (this.ring === undefined || view.buffer !== this.ring.buffer) return;
    const slot = this.byStart.get(view.byteOffset - this.ring.byteOffset);
    if (!slot || slot.released) return;
    slot.released = true;
    while (this.slots[0]?.released) this.byStart.delete(this.slots.shift()!.start);
  }

  /** Bytes in live slots and in the gaps between them that cannot be reused yet. */
  get held(): number {
    const head = this.slots[0]?.start;
    if (head === undefined) return 0;
    return this.tail > head ? this.tail - head : this.capacity - head + this.tail;
  }

  /** Where a slot of `size` bytes can start, or -1. */
  private place(size: number): number {
    if (size <= 0 || size > this.capacity) return -1;
    const head = this.slots[0]?.start;
    if (head === undefined) return 0; // empty: start over at the beginning
    if (this.tail > head) {
      // Live bytes in [head, tail): free space after tail, then (wrapping) before head.
      if (this.tail + size <= this.capacity) return this.tail;
      return size <= head ? 0 : -1;
    }
    // Wrapped: live bytes in [head, capacity) and [0, tail); free space is [tail, head).
    return this.tail + size <= head ? this.tail : -1;
  }
}
