import { describe, expect, it } from 'vitest';
import { validateSchedule } from '../../src/actors/container-actor.ts';
import { InvalidArgumentError } from '../../src/util/errors.ts';

describe('checkpoint schedules', () => {
  it('accepts a cron expression (with or without seconds), a period, or nothing', () => {
    for (const schedule of [{ cron: '*/5 * * * *' }, { cron: '*/2 * * * * *' }, { everyMs: 60_000 }, {}]) {
      expect(() => validateSchedule('c1', schedule)).not.toThrow();
    }
  });

  it('rejects a bad cron expression, a too short period, or both kinds at once, naming the owner', () => {
    expect(() => validateSchedule('c1', { cron: 'every five minutes' })).toThrow(/c1: "every five minutes" is not a valid cron expression/);
    expect(() => validateSchedule('c1', { everyMs: 10 })).toThrow(/c1 must be an integer of at least 1000 ms, got 10/);
    expect(() => validateSchedule('c1', { everyMs: 1500.5 })).toThrow(InvalidArgumentError);
    expect(() => validateSchedule('c1', { cron: '* * * * *', everyMs: 60_000 })).toThrow(/not both/);
  });
});
