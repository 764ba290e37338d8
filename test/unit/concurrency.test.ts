import { describe, expect, it } from 'vitest';
import { Semaphore, mapBounded, withTimeout } from '../../src/util/concurrency.ts';
import { TimeoutError } from '../../src/util/errors.ts';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('mapBounded', () => {
  it('keeps order and never runs more than the limit at once', async () => {
    let running = 0;
    let peak = 0;
    const results = await mapBounded([5, 1, 4, 2, 3, 0], 2, async (n) => {
      running++;
      peak = Math.max(peak, running);
      await tick(n * 3);
      running--;
      return n * 10;
    });
    expect(results).toEqual([50, 10, 40, 20, 30, 0]);
    expect(peak).toBe(2);
  });

  it('rejects with the first failure after the running tasks settle, starting no new ones', async () => {
    const started: number[] = [];
    let settled = 0;
    const error = await mapBounded([1, 2, 3, 4, 5], 2, async (n) => {
      started.push(n);
      await tick(5);
      settled++;
      if (n === 1) throw new Error('boom');
      return n;
    }).catch((e: unknown) => e);
    expect((error as Error).message).toBe('boom');
    expect(started).toEqual([1, 2]);
    expect(settled).toBe(2);
  });

  it('refuses a limit below 1', async () => {
    await expect(mapBounded([1], 0, (n) => Promise.resolve(n))).rejects.toThrow(/positive integer/);
  });
});

describe('Semaphore', () => {
  it('never lets more than the limit run, and serves waiters in arrival order', async () => {
    const semaphore = new Semaphore(2);
    let running = 0;
    let peak = 0;
    const order: number[] = [];
    await Promise.all(
      [30, 5, 5, 5, 5].map((ms, i) =>
        semaphore.use(async () => {
          running++;
          peak = Math.max(peak, running);
          order.push(i);
          await tick(ms);
          running--;
        }),
      ),
    );
    expect(peak).toBe(2);
    expect(order).toEqual([0, 1, 2, 3, 4]);
    expect(semaphore.inUse).toBe(0);
    expect(semaphore.waiting).toBe(0);
  });

  it('frees the slot of a task that fails', async () => {
    const semaphore = new Semaphore(1);
    await expect(semaphore.use(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(await semaphore.use(() => Promise.resolve(7))).toBe(7);
    expect(semaphore.inUse).toBe(0);
  });

  it('rejects a limit that is not a positive integer', () => {
    expect(() => new Semaphore(0)).toThrow(RangeError);
  });
});

describe('withTimeout', () => {
  it('passes a timely outcome through, and rejects a late one with a TimeoutError naming what was waited for', async () => {
    expect(await withTimeout(tick(5).then(() => 'done'), 1000, 'a quick step')).toBe('done');
    await expect(withTimeout(Promise.reject(new Error('boom')), 1000, 'a failing step')).rejects.toThrow('boom');
    const late = withTimeout(tick(500), 20, 'deregistering');
    await expect(late).rejects.toThrow(TimeoutError);
    await expect(late).rejects.toThrow('deregistering did not finish within 20 ms');
  });
});
