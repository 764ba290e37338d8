import { UnavailableError, errorMessage } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';
import type { RingView } from './ring.ts';

/**
 * The agent's view of the ring as Cassandra's gossip sees it (what `nodetool status` shows), read from the
 * agent's own local node and kept current by polling. Implementations: {@link JmxGossipView} (a long-lived JMX
 * probe, cheap; the default) and {@link NodetoolGossipView} (a `nodetool status` per poll, a JVM start each).
 *
 * A view never claims a node is up because it could not ask: when the local node does not answer, the last
 * view expires after a few poll intervals, `current()` returns undefined and `refresh()` rejects with a
 * {@link GossipUnavailableError}, while the implementation keeps retrying.
 */
export interface GossipView {
  /** Where the view is read: the local node's JMX endpoint, `host:port`. */
  readonly source: string;
  /** The last view read, or undefined before the first one and whenever the last one is too old to trust. */
  current(): RingView | undefined;
  /** Why the last poll failed, or undefined while polls succeed. */
  lastError(): GossipUnavailableError | undefined;
  /** Polls now (e.g. when the driver reports a host down) and resolves with the fresh view. */
  refresh(): Promise<RingView>;
  /** Subscribes; returns the function that unsubscribes. */
  on<E extends keyof GossipViewEvents>(event: E, listener: GossipViewEvents[E]): () => void;
  /** Stops polling and ends whatever process the view started; idempotent. */
  close(): Promise<void>;
}

export interface GossipViewEvents {
  /**
   * Some node's status or state changed (or a node appeared or disappeared). `previous` is the last view
   * announced, undefined for the first.
   */
  change: (view: RingView, previous: RingView | undefined) => void;
  /** Polls started failing (once per distinct failure, not once per poll). */
  error: (error: GossipUnavailableError) => void;
}

/** The local node's gossip view cannot be read: its JMX endpoint does not answer, or the reader itself failed. */
export class GossipUnavailableError extends UnavailableError {
  constructor(
    /** The JMX endpoint asked, `host:port`. */
    readonly source: string,
    /** What failed, in the reader's words (e.g. "connect: java.net.ConnectException: Connection refused"). */
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(
      `cannot read the gossip view from the Cassandra node's JMX at ${source}: ${detail}. ` +
        'Check that the local Cassandra node runs and listens for JMX on that address and port ' +
        '(-Dcom.sun.management.jmxremote.port, .host; no JMX authentication or SSL), and that it is not hung; ' +
        'retrying meanwhile',
      options,
    );
  }
}

/** True when the two views differ in membership or in any node's status or state (host ids, racks ignored). */
export function statesDiffer(a: RingView | undefined, b: RingView | undefined): boolean {
  if (a === undefined || b === undefined) return a !== b;
  if (a.size !== b.size) return true;
  for (const [address, m] of a) {
    const o = b.get(address);
    if (!o || o.status !== m.status || o.state !== m.state) return true;
  }
  return false;
}

export interface PollingOptions {
  source: string;
  intervalMs: number;
  /** A view older than this is no longer returned by current(). */
  staleAfterMs: number;
  logger: Logger;
}

/**
 * What every implementation shares: listeners, change detection, expiry of the last view, error reporting.
 * Subclasses call {@link accept} with each view read and {@link fail} with each failed poll.
 */
export abstract class PollingGossipView implements GossipView {
  readonly source: string;
  protected readonly intervalMs: number;
  protected readonly logger: Logger;
  private readonly staleAfterMs: number;
  private view: RingView | undefined;
  private viewAt = 0;
  private announced: RingView | undefined;
  private error: GossipUnavailableError | undefined;
  private readonly listeners: { [E in keyof GossipViewEvents]: Set<GossipViewEvents[E]> } = {
    change: new Set(),
    error: new Set(),
  };
  protected closed = false;

  constructor(options: PollingOptions) {
    this.source = options.source;
    this.intervalMs = options.intervalMs;
    this.staleAfterMs = options.staleAfterMs;
    this.logger = options.logger;
  }

  current(): RingView | undefined {
    if (this.view === undefined || Date.now() - this.viewAt > this.staleAfterMs) return undefined;
    return this.view;
  }

  lastError(): GossipUnavailableError | undefined {
    return this.error;
  }

  on<E extends keyof GossipViewEvents>(event: E, listener: GossipViewEvents[E]): () => void {
    const set = this.listeners[event] as Set<GossipViewEvents[E]>;
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  abstract refresh(): Promise<RingView>;
  abstract close(): Promise<void>;

  protected accept(view: RingView): void {
    if (this.closed) return;
    this.view = view;
    this.viewAt = Date.now();
    if (this.error) {
      this.logger.info('gossip view readable again', { source: this.source });
      this.error = undefined;
    }
    if (!statesDiffer(view, this.announced)) return;
    const previous = this.announced;
    this.announced = view;
    for (const listener of this.listeners.change) this.call(() => listener(view, previous));
  }

  protected fail(detail: string, cause?: unknown): GossipUnavailableError {
    const error = new GossipUnavailableError(this.source, detail, cause === undefined ? undefined : { cause });
    // Once per distinct failure: "no answer for 2004 ms" repeats "no answer for 1003 ms".
    const first = this.error === undefined || sameFailure(this.error.detail) !== sameFailure(detail);
    this.error = error;
    if (first && !this.closed) {
      this.logger.warn(error.message);
      for (const listener of this.listeners.error) this.call(() => listener(error));
    }
    return error;
  }

  private call(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.logger.error('a gossip view listener threw', { error: errorMessage(err) });
    }
  }
}

function sameFailure(detail: string): string {
  return detail.replace(/\d+/g, '#');
}

/** The part of cassandra-driver's Client this needs. */
export interface HostEvents {
  on(event: 'hostDown', listener: (host: { address: string }) => void): unknown;
  removeListener(event: 'hostDown', listener: (host: { address: string }) => void): unknown;
}

/**
 * Early hint: when the driver sees a host go down (its socket closed: a killed node, not a hung one), poll the
 * gossip view at once rather than at the next interval. Gossip still decides; the driver only hurries it.
 * Returns the function that unsubscribes.
 */
export function refreshOnHostDown(client: HostEvents, view: GossipView, logger?: Logger): () => void {
  const listener = (host: { address: string }) => {
    view.refresh().catch((err: unknown) => {
      logger?.debug('gossip refresh after driver hostDown failed', { host: host.address, error: errorMessage(err) });
    });
  };
  client.on('hostDown', listener);
  return () => {
    client.removeListener('hostDown', listener);
  };
}
