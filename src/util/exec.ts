import { spawn } from 'node:child_process';
import { CommandFailedError, TimeoutError, ToolMissingError } from './errors.ts';

export interface RunOptions {
  /** Kill the process and its process group (SIGKILL) and throw a TimeoutError after this many ms. Default 60 s. */
  timeoutMs?: number;
  /** Extra environment variables, merged over the current environment. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Data written to the child's stdin, then stdin is closed. */
  input?: string;
  /** Resolve instead of throwing when the command exits non-zero. */
  allowFailure?: boolean;
  /** What to tell the user when the program is not installed. */
  missingHint?: string;
}

export interface RunResult {
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

const MAX_CAPTURE = 1 << 20;

/**
 * Runs a program with an argument vector, never through a shell, so no user-supplied string is ever
 * interpreted. Output is captured (bounded) and attached to the error when the program fails.
 */
export function run(program: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const argv = [program, ...args];
  const timeoutMs = options.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, {
      cwd: options.cwd,
      env: options.env ? { ...process.env, ...options.env } : process.env,
      // Its own process group, so a timeout can kill what it started too (lxc-checkpoint leaves criu behind).
      detached: true,
      // stdout and stderr are always pipes, so child.stdout/stderr below are never null.
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      if (stdout.length < MAX_CAPTURE) stdout += d;
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < MAX_CAPTURE) stderr += d;
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    }, timeoutMs);
    child.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (err.code === 'ENOENT') {
        reject(new ToolMissingError(program, options.missingHint ?? 'install it or put it on PATH', { cause: err }));
      } else {
        reject(err);
      }
    });
    child.on('close', (exitCode, signal) => {
      clearTimeout(timer);
      if (timedOut) {
        reject(new TimeoutError(`${argv.join(' ')} did not finish within ${timeoutMs} ms and was killed`));
        return;
      }
      const result = { exitCode, signal, stdout, stderr };
      if (exitCode !== 0 && !options.allowFailure) {
        reject(new CommandFailedError(argv, exitCode, signal, stdout, stderr));
        return;
      }
      resolve(result);
    });
  });
}
