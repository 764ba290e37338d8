import { afterEach, describe, expect, it } from 'vitest';
import type { ClusterEvent } from '../../src/cluster/events.ts';
import { RefusedRequestAudit } from '../../src/cluster/refused-requests.ts';

const refusal = (n: number): ClusterEvent => ({ kind: 'request-refused', host: 'host1', outcome: 'refused', detail: `Restore: refused #${n}` });

describe('RefusedRequestAudit', () => {
  let audit: RefusedRequestAudit | undefined;
  afterEach(() => audit?.stop());

  function setup(perMinute: number) {
    let now = Date.parse('2026-12-05T01:00:00Z');
    const written: ClusterEvent[] = [];
    const observed: ClusterEvent[] = [];
    audit = new RefusedRequestAudit({
      events: { record: (event) => (written.push(event), Promise.resolve()) },
      hostId: 'host1', perMinute, observe: (event) => observed.push(event), now: () => now,
    });
    return { written, observed, audit, advance: (ms: number) => (now += ms) };
  }

  it('writes refusals one by one up to the limit, counts the rest and sums them up once the minute is over', () => {
    const { written, observed, audit, advance } = setup(3);
    for (let n = 1; n <= 5; n++) audit.refused('Restore', refusal(n));
    audit.refused('HandOff', refusal(6));
    expect(written.map((e) => e.detail)).toEqual(['Restore: refused #1', 'Restore: refused #2', 'Restore: refused #3']);
    // The unwritten ones still reach the metrics, one by one (the written ones reach them through the event log).
    expect(observed.map((e) => e.detail)).toEqual(['Restore: refused #4', 'Restore: refused #5', 'Restore: refused #6']);

    advance(60_000);
    audit.refused('Restore', refusal(7));
    expect(written.slice(3).map((e) => [e.kind, e.outcome])).toEqual([['requests-unrecorded', 'refused'], ['request-refused', 'refused']]);
    expect(written[3]!.detail).toBe(
      '3 more refused or failed requests since 2026-12-05T01:00:00.000Z were not recorded one by one (at most 3 a minute are): Restore ×2, HandOff ×1',
    );
    expect(written[4]!.detail).toBe('Restore: refused #7'); // a new minute, a new allowance
  });

  it('writes no summary when nothing was left out, and writes what is left at stop', () => {
    const { written, audit, advance } = setup(1);
    audit.refused('Restore', refusal(1));
    advance(61_000);
    audit.refused('Restore', refusal(2));
    expect(written.map((e) => e.kind)).toEqual(['request-refused', 'request-refused']);
    audit.refused('Restore', refusal(3));
    audit.stop();
    expect(written.map((e) => e.kind)).toEqual(['request-refused', 'request-refused', 'requests-unrecorded']);
    expect(written[2]!.detail).toMatch(/^1 more refused or failed requests since .* Restore ×1$/);
  });
});
