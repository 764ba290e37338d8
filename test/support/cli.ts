import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { run } from '../../src/util/exec.ts';

/** The `lxcr` CLI of this checkout. */
const LXCR = join(import.meta.dirname, '../../bin/lxcr.js');
/** A CLI run that takes longer is killed: no test leaves one behind. */
const CLI_TIMEOUT_MS = 120_000;

/** How a run of the CLI exited and what it printed. */
export interface CliRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `lxcr args...` to its end, blocking this process (the agents it talks to run in processes of their own). */
export function lxcr(...args: string[]): CliRun {
  const result = spawnSync(process.execPath, [LXCR, ...args], { encoding: 'utf8', timeout: CLI_TIMEOUT_MS });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Runs `lxcr args...` without blocking, for a test that does something else while the command runs. */
export async function lxcrInBackground(...args: string[]): Promise<CliRun> {
  const { exitCode, stdout, stderr } = await run(process.execPath, [LXCR, ...args], { allowFailure: true, timeoutMs: CLI_TIMEOUT_MS });
  return { status: exitCode, stdout, stderr };
}
