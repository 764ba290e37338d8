import { InvalidArgumentError, errorMessage } from '../util/errors.ts';
import { run } from '../util/exec.ts';
import { createLogger, type Logger } from '../util/log.ts';
import { PollingGossipView } from './gossip.ts';
import { parseNodetoolStatus } from './nodetool.ts';
import type { RingView } from './ring.ts';

export interface NodetoolGossipViewOptions {
  /** The local Cassandra node's JMX address. */
  host: string;
  /** Its JMX port. */
  port: number;
  /** Pause between the end of one `nodetool status` and the start of the next, in ms. Default 5000: each call costs ~1 s of CPU. */
  intervalMs?: number;
  /** The nodetool program (Cassandra's bin/nodetool). Default `nodetool` on PATH. */
  nodetool?: string;
  /** How long one call may take. Default 30 s. */
  timeoutMs?: number;
  /**
   * Runs `nodetool status` against the node and returns its output, instead of `<nodetool> -h host -p port
   * status` (the testbed launches nodetool's class directly).
   */
  runStatus?: () => Promise<string>;
  logger?: Logger;
}

/**
 * The gossip view from `nodetool status`, one JVM per poll: for where the JMX probe cannot run. Polls one
 * at a time; a view expires after three intervals plus one call's timeout without a successful poll.
 */
export class NodetoolGossipView extends PollingGossipView {
  private readonly runStatus: () => Promise<string>;
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<RingView> | undefined;

  constructor(options: NodetoolGossipViewOptions) {
    const intervalMs = options.intervalMs ?? 5000;
    const timeoutMs = options.timeoutMs ?? 30_000;
    if (!(intervalMs >= 100)) throw new InvalidArgumentError(`gossip poll interval must be at least 100 ms, got ${intervalMs}`);
    super({
      source: `${options.host}:${options.port}`,
      intervalMs,
      staleAfterMs: 3 * intervalMs + timeoutMs,
      logger: options.logger ?? createLogger('gossip'),
    });
    const program = options.nodetool ?? 'nodetool';
    this.runStatus =
      options.runStatus ??
      (async () => {
        const { stdout } = await run(program, ['-h', options.host, '-p', String(options.port), 'status'], {
          timeoutMs,
          // Cassandra 2.1's nodetool builds a JMX URL that Java 17 rejects unless parsed the old way.
          env: { JAVA_TOOL_OPTIONS: '-Dcom.sun.jndi.rmiURLParsing=legacy' },
          missingHint: "install Cassandra's tools (bin/nodetool) or pass the nodetool path",
        });
        return stdout;
      });
    this.schedule(0);
  }

  refresh(): Promise<RingView> {
    if (this.closed) return Promise.reject(this.fail('the gossip view is closed'));
    return this.poll();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    // A nodetool call in flight ends within its timeout (run() kills it then).
    await this.inFlight?.catch(() => undefined);
  }

  private schedule(delayMs: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.poll()
        .catch(() => undefined) // Reported through fail(); the next poll retries.
        .finally(() => this.schedule(this.intervalMs));
    }, delayMs);
  }

  /** One `nodetool status` at a time: a refresh during a poll shares it. */
  private poll(): Promise<RingView> {
    if (!this.inFlight) {
      const polling = this.pollOnce();
      this.inFlight = polling;
      const clear = () => {
        if (this.inFlight === polling) this.inFlight = undefined;
      };
      polling.then(clear, clear);
    }
    return this.inFlight;
  }

  private async pollOnce(): Promise<RingView> {
    try {
      const view = parseNodetoolStatus(await this.runStatus());
      this.accept(view);
      return view;
    } catch (err) {
      throw this.fail(`nodetool status: ${lastLine(errorMessage(err))}`, err);
    }
  }
}

function lastLine(message: string): string {
  const lines = message.trim().split('\n');
  return lines.length <= 3 ? lines.join(' ') : `${lines[0]} … ${lines[lines.length - 1]}`;
}
