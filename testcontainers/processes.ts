import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { readProcStatSync } from '../src/util/proc.ts';

/**
 * Process bookkeeping for the testbed. Every process the testbed starts is recorded by PID together with a
 * marker string that appears in its command line (its own run directory). A PID is only ever signalled after
 * /proc confirms it still carries that marker, so a recycled PID of an unrelated process is never touched,
 * and nothing is ever killed by name pattern.
 */

export function commandLine(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return undefined;
  }
}

/** True when `pid` is alive (not a zombie) and its command line contains `marker`. */
export function isOurs(pid: number, marker: string): boolean {
  const cmd = commandLine(pid);
  if (cmd === undefined || !cmd.includes(marker)) return false;
  return readProcStatSync(pid)?.state !== 'Z';
}

/** Sends `signal` to `pid` if it is still ours. Returns whether it was sent. */
export function signalIfOurs(pid: number, marker: string, signal: NodeJS.Signals): boolean {
  if (!isOurs(pid, marker)) return false;
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** SIGKILLs `pid` if it is ours and waits (bounded) until it is gone. */
export async function killAndWait(pid: number, marker: string, timeoutMs = 15_000): Promise<boolean> {
  signalIfOurs(pid, marker, 'SIGKILL');
  const deadline = Date.now() + timeoutMs;
  while (isOurs(pid, marker)) {
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
  return true;
}

/**
 * Synchronous last-resort cleanup for when this process is interrupted or exits without running its
 * teardown: SIGKILL every registered PID that is still ours. Idempotent; handlers are installed once.
 */
const exitTargets = new Map<number, string>();
let hooksInstalled = false;

export function killOnExit(pid: number, marker: string): void {
  exitTargets.set(pid, marker);
  if (hooksInstalled) return;
  hooksInstalled = true;
  const killAll = () => {
    for (const [p, m] of exitTargets) signalIfOurs(p, m, 'SIGKILL');
  };
  process.on('exit', killAll);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      killAll();
      // Let other handlers (vitest's own) run; if we were the only one, end as the signal would have.
      if (process.listenerCount(signal) === 0) process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1));
    });
  }
}

export function forgetOnExit(pid: number): void {
  exitTargets.delete(pid);
}
