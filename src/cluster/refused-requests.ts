import type { ClusterEvent, EventLog } from './events.ts';

const WINDOW_MS = 60_000;
/** Refused requests written one by one per minute; the rest of the minute's go into one summary row. */
export const DEFAULT_REFUSALS_PER_MINUTE = 60;

export interface RefusedRequestAuditOptions {
  events: Pick<EventLog, 'record'>;
  hostId: string;
  /** Told of every refusal, written or not (the metrics count each one). */
  observe?: (event: ClusterEvent) => void;
  perMinute?: number;
  now?: () => number;
}

/**
 * The audit trail's record of refused and failed API requests, bounded: at most `perMinute` of them a minute are
 * written one by one; the rest are counted by method and written as one `requests-unrecorded` row when the minute
 * is over. A client hammering the API, an unauthenticated one included, cannot grow the audit trail (RF 3
 * writes at QUORUM) faster than that, and the trail still says that it happened, how often and with what.
 */
export class RefusedRequestAudit {
  private readonly perMinute: number;
  private readonly now: () => number;
  private windowStart: number;
  private writtenInWindow = 0;
  private readonly unrecorded = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly options: RefusedRequestAuditOptions) {
    this.perMinute = options.perMinute ?? DEFAULT_REFUSALS_PER_MINUTE;
    this.now = options.now ?? Date.now;
    this.windowStart = this.now();
    // A summary is written even when the requests stop coming; unref'd: it never keeps the agent alive.
    this.timer = setInterval(() => this.rollWindow(), WINDOW_MS).unref();
  }

  /** A request `method` was refused or failed: `event` says how. */
  refused(method: string, event: ClusterEvent): void {
    this.rollWindow();
    if (this.writtenInWindow < this.perMinute) {
      this.writtenInWindow++;
      void this.options.events.record(event);
      return;
    }
    this.options.observe?.(event);
    this.unrecorded.set(method, (this.unrecorded.get(method) ?? 0) + 1);
  }

  /** Writes what is still only counted; no more refusals are expected after this. */
  stop(): void {
    clearInterval(this.timer);
    this.writeSummary();
  }

  private rollWindow(): void {
    if (this.now() - this.windowStart < WINDOW_MS) return;
    this.writeSummary();
    this.windowStart = this.now();
    this.writtenInWindow = 0;
  }

  private writeSummary(): void {
    if (this.unrecorded.size === 0) return;
    const byMethod = [...this.unrecorded].map(([method, count]) => `${method} ×${count}`).join(', ');
    const total = [...this.unrecorded.values()].reduce((sum, count) => sum + count, 0);
    this.unrecorded.clear();
    void this.options.events.record({
      kind: 'requests-unrecorded', host: this.options.hostId, outcome: 'refused',
      detail: `${total} more refused or failed requests since ${new Date(this.windowStart).toISOString()} were not recorded one by one (at most ${this.perMinute} a minute are): ${byMethod}`,
    });
  }
}
