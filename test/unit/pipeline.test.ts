import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { BusyClock, ChunkArena, mapOrdered, readAhead } from '../../src/storage/pipeline.ts';

async function collect<T>(source: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of source) out.push(item);
  return out;
}

/** A source of 0..count-1 that records how far it was pulled and whether it was closed. */
function counting(count: number, delayMs = 0) {
  const state = { pulled: 0, closed: false, finished: false };
  async function* gen(): AsyncGenerator<number> {
    try {
      for (let i = 0; i < count; i++) {
        if (delayMs > 0) await sleep(delayMs);
        state.pulled = i + 1;
        yield i;
      }
      state.finished = true;
    } finally {
      state.closed = true;
    }
  }
  return { state, source: gen() };
}

describe('readAhead', () => {
  it('yields every item in order, from async and sync sources', async () => {
    expect(await collect(readAhead(counting(50).source, { maxItems: 3 }))).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(await collect(readAhead([1, 2, 3], { maxItems: 1 }))).toEqual([1, 2, 3]);
    expect(await collect(readAhead([], { maxItems: 1 }))).toEqual([]);
  });

  it('pulls ahead of the consumer in the background, never more than maxItems', async () => {
    const { state, source } = counting(100);
    const ahead = readAhead(source, { maxItems: 5 });
    const iterator = ahead[Symbol.asyncIterator]();
    await sleep(20);
    // Nothing taken yet: the pump filled the queue to its bound and stopped.
    expect(state.pulled).toBe(5);
    expect(ahead.buffered).toBe(5);
    await iterator.next();
    await sleep(20);
    expect(state.pulled).toBe(6);
    expect(ahead.buffered).toBe(5);
    await iterator.return!();
  });

  it('bounds the bytes held, always letting one item through', async () => {
    const sizes = [10, 10, 10, 100, 10, 10];
    const ahead = readAhead(sizes, { maxItems: 100, maxBytes: 25, sizeOf: (n) => n });
    const iterator = ahead[Symbol.asyncIterator]();
    await sleep(10);
    expect(ahead.buffered).toBe(3); // 30 bytes: full once past 25
    expect(ahead.bufferedBytes).toBe(30);
    const seen: number[] = [];
    let maxHeld = 0;
    for (let step = await iterator.next(); !step.done; step = await iterator.next()) {
      seen.push(step.value);
      await sleep(5);
      maxHeld = Math.max(maxHeld, ahead.bufferedBytes);
    }
    expect(seen).toEqual(sizes);
    // An item is added only while fewer than maxBytes are held: at most the bound plus one item.
    expect(maxHeld).toBeLessThan(25 + 100);
    expect(maxHeld).toBeGreaterThanOrEqual(100);
  });

  it('delivers the items produced before a source error, then the error', async () => {
    function* failing(): Generator<number> {
      yield 1;
      yield 2;
      throw new Error('disk gone');
    }
    const seen: number[] = [];
    await expect(
      (async () => {
        for await (const item of readAhead(failing(), { maxItems: 10 })) seen.push(item);
      })(),
    ).rejects.toThrow('disk gone');
    expect(seen).toEqual([1, 2]);
  });

  it('stops pulling and closes the source when the consumer leaves early', async () => {
    const { state, source } = counting(1000, 1);
    for await (const item of readAhead(source, { maxItems: 4 })) {
      if (item === 2) break;
    }
    // The break returned only after the source was closed: nothing of it runs any more.
    expect(state.closed).toBe(true);
    expect(state.finished).toBe(false);
    const pulled = state.pulled;
    await sleep(20);
    expect(state.pulled).toBe(pulled);
    expect(pulled).toBeLessThanOrEqual(3 + 4 + 1);
  });

  it('refuses bad bounds', () => {
    expect(() => readAhead([], { maxItems: 0 })).toThrow(RangeError);
    expect(() => readAhead([], { maxItems: 1, maxBytes: 0 })).toThrow(RangeError);
  });
});

describe('mapOrdered', () => {
  it('yields results in source order whatever order the tasks finish in', async () => {
    const delays = [30, 5, 20, 1, 10, 2];
    const results = await collect(mapOrdered(delays, 3, async (ms) => {
      await sleep(ms);
      return ms * 2;
    }));
    expect(results).toEqual(delays.map((ms) => ms * 2));
  });

  it('runs at most `limit` tasks at once, started in source order', async () => {
    let running = 0;
    let maxRunning = 0;
    const started: number[] = [];
    await collect(mapOrdered(Array.from({ length: 20 }, (_, i) => i), 4, async (i) => {
      started.push(i);
      running++;
      maxRunning = Math.max(maxRunning, running);
      await sleep(i % 3);
      running--;
    }));
    expect(maxRunning).toBe(4);
    expect(started).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });

  it('on a task failure, rethrows it only after the other running tasks have settled', async () => {
    let running = 0;
    const error = await collect(mapOrdered([1, 2, 3, 4], 4, async (i) => {
      running++;
      try {
        if (i === 1) throw new Error('task 1 failed');
        await sleep(20);
        return i;
      } finally {
        running--;
      }
    })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toBe('task 1 failed');
    expect(running).toBe(0);
  });

  it('when the consumer stops early, waits for the running tasks and closes the source', async () => {
    const { state, source } = counting(100);
    let running = 0;
    for await (const item of mapOrdered(source, 3, async (i) => {
      running++;
      await sleep(10);
      running--;
      return i;
    })) {
      if (item === 1) break;
    }
    expect(running).toBe(0);
    expect(state.closed).toBe(true);
  });

  it('refuses a limit below 1', async () => {
    await expect(collect(mapOrdered([1], 0, (i) => i))).rejects.toThrow(RangeError);
  });
});

describe('BusyClock', () => {
  it('gives the aggregate time per operation when several overlap, ignoring idle time', () => {
    let now = 0;
    const clock = new BusyClock(() => now);
    // Four operations start together and finish 10 ms apart after the first one's 40 ms.
    for (let i = 0; i < 4; i++) clock.begin();
    now = 40;
    expect(clock.end()).toBe(40);
    now = 50;
    expect(clock.end()).toBe(10);
    now = 60;
    expect(clock.end()).toBe(10);
    now = 70;
    expect(clock.end()).toBe(10);
    // Idle for a while: a new operation's time starts at its begin.
    now = 1000;
    clock.begin();
    now = 1025;
    expect(clock.end()).toBe(25);
    expect(() => clock.end()).toThrow(RangeError);
  });
});

describe('ChunkArena', () => {
  it('hands out slots in order, reuses space once released in order, and wraps around', () => {
    const arena = new ChunkArena(100);
    const a = arena.allocate(40);
    const b = arena.allocate(40);
    expect(a.buffer).toBe(b.buffer);
    expect(b.byteOffset - a.byteOffset).toBe(40);
    expect(arena.held).toBe(80);
    // 30 more do not fit after b, nor before a (still held): a buffer of its own.
    const own = arena.allocate(30);
    expect(own.buffer).not.toBe(a.buffer);
    expect(arena.fallbacks).toBe(1);
    arena.release(own); // not the arena's: ignored
    arena.release(a);
    expect(arena.held).toBe(40);
    const c = arena.allocate(30); // wraps to the start
    expect(c.byteOffset).toBe(a.byteOffset);
    expect(arena.held).toBe(90); // [40, 100) and [0, 30)
    arena.release(b);
    arena.release(c);
    expect(arena.held).toBe(0);
  });

  it('keeps space held until every earlier slot is back, then frees it all', () => {
    const arena = new ChunkArena(100);
    const [a, b, c] = [arena.allocate(30), arena.allocate(30), arena.allocate(30)];
    arena.release(b);
    arena.release(c);
    expect(arena.held).toBe(90); // a still out
    expect(arena.allocate(20).buffer).not.toBe(a.buffer);
    arena.release(a);
    expect(arena.held).toBe(0);
    expect(arena.allocate(100).byteOffset).toBe(a.byteOffset);
  });

  it('never gives out bytes of a slot still held (random workload, contents checked)', () => {
    const arena = new ChunkArena(64 * 1024);
    const live: Array<{ view: Buffer; fill: number }> = [];
    let seed = 12345;
    const random = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    for (let step = 0; step < 5000; step++) {
      if (live.length > 0 && random() < 0.5) {
        // Mostly oldest first, sometimes out of order, as chunks finish.
        const index = random() < 0.8 ? 0 : Math.floor(random() * live.length);
        const [{ view, fill }] = live.splice(index, 1) as [{ view: Buffer; fill: number }];
        expect(view.every((byte) => byte === fill)).toBe(true);
        arena.release(view);
      } else {
        const view = arena.allocate(1 + Math.floor(random() * 8 * 1024));
        const fill = step % 256;
        view.fill(fill);
        live.push({ view, fill });
      }
    }
    for (const { view, fill } of live) expect(view.every((byte) => byte === fill)).toBe(true);
    expect(arena.fallbacks).toBeGreaterThan(0);
  });

  it('refuses a capacity below 1', () => {
    expect(() => new ChunkArena(0)).toThrow(RangeError);
  });
});
