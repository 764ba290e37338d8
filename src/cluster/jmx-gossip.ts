import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError, errorMessage, lastLines } from '../util/errors.ts';
import { run } from '../util/exec.ts';
import { createLogger, type Logger } from '../util/log.ts';
import { PollingGossipView } from './gossip.ts';
import type { RingMember, RingView } from './ring.ts';

/**
 * The gossip view read by a long-lived JMX probe: src/cluster/jmx/GossipProbe.java, a JDK-only Java program
 * that keeps one JMX connection to the local Cassandra node and prints one JSON line per poll. One small JVM
 * per agent instead of a nodetool JVM per poll.
 */

const REPO_DIR = resolve(fileURLToPath(new URL('../..', import.meta.url)));
/** The probe's source, kept in the repository and compiled once into the cache directory. */
export const PROBE_SOURCE = join(REPO_DIR, 'src', 'cluster', 'jmx', 'GossipProbe.java');
const PROBE_CLASS = 'GossipProbe';

/** One poll's answer from the probe: the StorageService attributes, and the snitch's racks and data centers. */
export interface ProbeView {
  type: 'view';
  seq: number;
  live: string[];
  unreachable: string[];
  joining: string[];
  leaving: string[];
  moving: string[];
  /** Endpoint → host id. */
  hostIds: Record<string, string>;
  racks: Record<string, string>;
  datacenters: Record<string, string>;
  /** How long the poll took in the probe. */
  pollMs: number;
}

/** A failed poll: `stage` is "connect" (no JMX connection) or "poll" (the connection broke or did not answer). */
export interface ProbeError {
  type: 'error';
  stage: string;
  message: string;
}

/** A poll has been waiting `ms` for the node's answer (printed every interval while it waits). */
export interface ProbeWaiting {
  type: 'waiting';
  stage: string;
  ms: number;
}

export interface ProbeHello {
  type: 'hello';
  jmx: string;
  intervalMs: number;
}

export type ProbeLine = ProbeView | ProbeError | ProbeWaiting | ProbeHello;

function isStringArray(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'string');
}

function isStringRecord(v: unknown): v is Record<string, string> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');
}

/** Parses and checks one line of the probe's output; throws InvalidArgumentError on anything else. */
export function parseProbeLine(text: string): ProbeLine {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`the gossip probe printed a line that is not JSON: ${text.slice(0, 200)}`, { cause: err });
  }
  const bad = (why: string) => new InvalidArgumentError(`the gossip probe printed an unexpected line (${why}): ${text.slice(0, 200)}`);
  if (typeof value !== 'object' || value === null) throw bad('not an object');
  const line = value as Record<string, unknown>;
  switch (line.type) {
    case 'hello':
      if (typeof line.jmx !== 'string' || typeof line.intervalMs !== 'number') throw bad('hello without jmx or intervalMs');
      return { type: 'hello', jmx: line.jmx, intervalMs: line.intervalMs };
    case 'error':
      if (typeof line.stage !== 'string' || typeof line.message !== 'string') throw bad('error without stage or message');
      return { type: 'error', stage: line.stage, message: line.message };
    case 'waiting':
      if (typeof line.stage !== 'string' || typeof line.ms !== 'number') throw bad('waiting without stage or ms');
      return { type: 'waiting', stage: line.stage, ms: line.ms };
    case 'view': {
      for (const key of ['live', 'unreachable', 'joining', 'leaving', 'moving'] as const) {
        if (!isStringArray(line[key])) throw bad(`${key} is not a list of addresses`);
      }
      for (const key of ['hostIds', 'racks', 'datacenters'] as const) {
        if (!isStringRecord(line[key])) throw bad(`${key} is not a map of strings`);
      }
      if (typeof line.seq !== 'number' || typeof line.pollMs !== 'number') throw bad('seq or pollMs missing');
      return line as unknown as ProbeView;
    }
    default:
      throw bad(`unknown type ${JSON.stringify(line.type)}`);
  }
}

/**
 * Maps the probe's lists onto `nodetool status`'s two letters. A node is U only when gossip lists it live;
 * unreachable, or known (by host id or a state list) but in neither list, it is D — never up by default.
 * State as nodetool decides it: joining, else leaving, else moving, else normal.
 */
export function probeViewToRing(view: ProbeView): RingView {
  const live = new Set(view.live);
  const joining = new Set(view.joining);
  const leaving = new Set(view.leaving);
  const moving = new Set(view.moving);
  const addresses = new Set([
    ...view.live, ...view.unreachable, ...view.joining, ...view.leaving, ...view.moving, ...Object.keys(view.hostIds),
  ]);
  const ring = new Map<string, RingMember>();
  for (const address of addresses) {
    ring.set(address, {
      address,
      status: live.has(address) ? 'U' : 'D',
      state: joining.has(address) ? 'J' : leaving.has(address) ? 'L' : moving.has(address) ? 'M' : 'N',
      hostId: view.hostIds[address] ?? '',
      rack: view.racks[address] ?? '',
      datacenter: view.datacenters[address] ?? '',
    });
  }
  return ring;
}

/** Where the compiled probe lives: `<cacheDir>/gossip-probe/<first 16 hex of the source's sha256>/` (as setup.sh does). */
export function probeClassDir(cacheDir: string, source: string | Buffer): string {
  return join(cacheDir, 'gossip-probe', createHash('sha256').update(source).digest('hex').slice(0, 16));
}

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return resolve(env.LXCR_CACHE_DIR ?? join(REPO_DIR, '.cache'));
}

/**
 * Compiles the probe once per source version (scripts/setup.sh does it ahead of time) and returns the class
 * directory. Concurrent callers each compile into a temporary directory and rename it into place.
 */
export async function ensureProbeCompiled(options: { javac?: string; cacheDir?: string } = {}): Promise<string> {
  const source = await readFile(PROBE_SOURCE);
  const dir = probeClassDir(options.cacheDir ?? defaultCacheDir(), source);
  if (existsSync(join(dir, `${PROBE_CLASS}.class`))) return dir;
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  await mkdir(tmp, { recursive: true });
  try {
    await run(options.javac ?? 'javac', ['-nowarn', '-d', tmp, PROBE_SOURCE], {
      timeoutMs: 120_000,
      missingHint: 'the JMX gossip probe needs a JDK to compile it once: run scripts/setup.sh (installs openjdk-17-jdk-headless), or choose the nodetool gossip view',
    });
    await rename(tmp, dir).catch((err: NodeJS.ErrnoException) => {
      // Another process compiled the same source meanwhile.
      if (!existsSync(join(dir, `${PROBE_CLASS}.class`))) throw err;
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return dir;
}

export interface JmxGossipViewOptions {
  /** The local Cassandra node's JMX address (its -Dcom.sun.management.jmxremote.host). */
  host: string;
  /** Its JMX port. */
  port: number;
  /** Poll period in ms. Default 1000. */
  intervalMs?: number;
  /** A probe silent for this many intervals is taken as stuck, killed and restarted. Default 3. */
  silentIntervals?: number;
  /** How long a new probe may take to print its first line (JVM start on a busy machine). Default 20 s. */
  startTimeoutMs?: number;
  /** Delay before restarting a probe that exited, doubling per failure up to maxRestartDelayMs. Default 500. */
  restartDelayMs?: number;
  /** Default 30 s. */
  maxRestartDelayMs?: number;
  /** The java launcher. Default `java` on PATH. */
  java?: string;
  /** The compiler used at first use if setup has not compiled the probe. Default `javac` on PATH. */
  javac?: string;
  /** Default LXCR_CACHE_DIR, else `<repo>/.cache`. */
  cacheDir?: string;
  logger?: Logger;
}

/** Small heap, one GC thread, C1 only, no perf-data file: the probe idles between polls and should cost little. */
const PROBE_JVM_FLAGS = [
  '-Xmx32m', '-Xss512k', '-XX:+UseSerialGC', '-XX:TieredStopAtLevel=1', '-XX:CICompilerCount=1',
  '-XX:-UsePerfData', '-Djava.net.preferIPv4Stack=true',
];

interface Waiter {
  resolve: (view: RingView) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class JmxGossipView extends PollingGossipView {
  private readonly options: Required<Omit<JmxGossipViewOptions, 'logger' | 'javac' | 'cacheDir'>>;
  private child: ChildProcess | undefined;
  private childExited: Promise<void> = Promise.resolve();
  private childStartedAt = 0;
  private lastLineAt: number | undefined;
  private stderrTail = '';
  private restartDelay: number;
  private restartTimer: NodeJS.Timeout | undefined;
  private readonly watchdog: NodeJS.Timeout;
  private waiters: Waiter[] = [];

  private constructor(options: JmxGossipViewOptions, private readonly classDir: string) {
    const intervalMs = options.intervalMs ?? 1000;
    const silentIntervals = options.silentIntervals ?? 3;
    super({
      source: `${options.host}:${options.port}`,
      intervalMs,
      staleAfterMs: silentIntervals * intervalMs,
      logger: options.logger ?? createLogger('gossip'),
    });
    this.options = {
      host: options.host,
      port: options.port,
      intervalMs,
      silentIntervals,
      startTimeoutMs: options.startTimeoutMs ?? 20_000,
      restartDelayMs: options.restartDelayMs ?? 500,
      maxRestartDelayMs: options.maxRestartDelayMs ?? 30_000,
      java: options.java ?? 'java',
    };
    this.restartDelay = this.options.restartDelayMs;
    this.watchdog = setInterval(() => this.checkSilence(), Math.min(intervalMs, 1000));
    this.spawnProbe();
  }

  /**
   * Compiles the probe if needed and starts it; resolves at once (call refresh() to wait for a first view).
   * Throws ToolMissingError when the probe is not compiled and no javac is there to compile it.
   */
  static async start(options: JmxGossipViewOptions): Promise<JmxGossipView> {
    if (!Number.isInteger(options.port) || options.port <= 0 || options.port > 65535) {
      throw new InvalidArgumentError(`JMX port must be 1..65535, got ${options.port}`);
    }
    if (options.intervalMs !== undefined && !(options.intervalMs >= 100)) {
      throw new InvalidArgumentError(`gossip poll interval must be at least 100 ms, got ${options.intervalMs}`);
    }
    const classDir = await ensureProbeCompiled({ javac: options.javac, cacheDir: options.cacheDir });
    return new JmxGossipView(options, classDir);
  }

  /** The running probe's PID (for measurements and tests). */
  probePid(): number | undefined {
    return this.child?.exitCode === null && this.child.signalCode === null ? this.child.pid : undefined;
  }

  refresh(): Promise<RingView> {
    if (this.closed) return Promise.reject(this.fail('the gossip view is closed'));
    return new Promise<RingView>((resolvePromise, reject) => {
      const timeoutMs = Math.max(5000, (this.options.silentIntervals + 1) * this.intervalMs);
      const waiter: Waiter = {
        resolve: resolvePromise,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(this.lastError() ?? this.fail(`no view from the probe within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.push(waiter);
      const stdin = this.child?.stdin;
      if (stdin && !stdin.destroyed) stdin.write('poll\n');
    });
  }

  async close(): Promise<void> {
    if (this.closed) {
      await this.childExited;
      return;
    }
    this.closed = true;
    clearInterval(this.watchdog);
    clearTimeout(this.restartTimer);
    this.settleWaiters(undefined, new InvalidArgumentError('the gossip view was closed'));
    this.killProbe();
    await this.childExited;
  }

  private spawnProbe(): void {
    const args = [...PROBE_JVM_FLAGS, '-cp', this.classDir, PROBE_CLASS, this.options.host, String(this.options.port), String(this.intervalMs)];
    const child = spawn(this.options.java, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child = child;
    this.childStartedAt = Date.now();
    this.lastLineAt = undefined;
    this.stderrTail = '';
    this.childExited = new Promise<void>((resolveExit) => {
      child.once('close', (code, signal) => {
        resolveExit();
        this.onExit(child, code, signal);
      });
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      // Spawn failures (java missing) arrive here, followed by 'close'.
      const detail = err.code === 'ENOENT' ? `${this.options.java} is not installed or not on PATH` : errorMessage(err);
      this.fail(`cannot start the gossip probe: ${detail}`, err);
    });
    child.stdin.on('error', () => {
      // EPIPE when the probe died; its exit is handled on 'close'.
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      this.stderrTail = (this.stderrTail + d).slice(-4000);
    });
    createInterface({ input: child.stdout }).on('line', (line) => this.onLine(child, line));
    this.logger.debug('gossip probe started', { pid: child.pid, source: this.source });
  }

  private onLine(child: ChildProcess, text: string): void {
    if (child !== this.child || this.closed) return;
    this.lastLineAt = Date.now();
    let line: ProbeLine;
    try {
      line = parseProbeLine(text);
    } catch (err) {
      this.settleWaiters(undefined, this.fail(errorMessage(err), err));
      return;
    }
    if (line.type === 'view') {
      const view = probeViewToRing(line);
      this.restartDelay = this.options.restartDelayMs;
      this.accept(view);
      this.settleWaiters(view);
    } else if (line.type === 'error') {
      this.settleWaiters(undefined, this.fail(`${line.stage}: ${line.message.replace(/\s+/g, ' ')}`));
    } else if (line.type === 'waiting' && line.ms >= this.options.silentIntervals * this.intervalMs) {
      // Not yet an answer, so refresh() keeps waiting; but by now the last view has expired: say why.
      this.fail(`${line.stage}: no answer from JMX for ${line.ms} ms (is the node hung?)`);
    }
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (child !== this.child) return;
    this.child = undefined;
    if (this.closed) return;
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    const tail = lastLines(this.stderrTail, 5);
    const error = this.fail(`the gossip probe (pid ${child.pid}) ${how}${tail ? `: ${tail}` : ''}; restarting in ${this.restartDelay} ms`);
    this.settleWaiters(undefined, error);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (!this.closed) this.spawnProbe();
    }, this.restartDelay);
    this.restartDelay = Math.min(this.restartDelay * 2, this.options.maxRestartDelayMs);
  }

  /** A probe that prints nothing for too long is stuck (its JVM frozen, or starved): kill it; onExit restarts it. */
  private checkSilence(): void {
    if (!this.child || this.closed) return;
    const now = Date.now();
    const silentFor = now - (this.lastLineAt ?? this.childStartedAt);
    const limit = this.lastLineAt === undefined ? this.options.startTimeoutMs : this.options.silentIntervals * this.intervalMs;
    if (silentFor <= limit) return;
    this.fail(`the gossip probe (pid ${this.child.pid}) printed nothing for ${silentFor} ms; killing it`);
    this.killProbe();
  }

  /** SIGKILL by PID; safe because the PID cannot be reused before Node has seen the child exit. */
  private killProbe(): void {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // Already gone; 'close' follows.
    }
  }

  private settleWaiters(view: RingView | undefined, error?: Error): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) {
      clearTimeout(w.timer);
      if (view) w.resolve(view);
      else w.reject(error ?? new Error('no view'));
    }
  }
}
