/**
 * Locating and checking the CRIU binary, and reading CRIU's own logs. The resolution order is the one
 * scripts/setup-criu.sh uses, so the runtime finds the criu that setup found or built.
 */
import { accessSync, constants } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { delimiter, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ToolMissingError } from '../util/errors.ts';
import { run } from '../util/exec.ts';

const REPO_DIR = resolve(fileURLToPath(new URL('../..', import.meta.url)));

export const CRIU_SETUP_HINT = 'run scripts/setup-criu.sh (or npm run setup), or set LXCR_CRIU to a working criu';

/** The cached build setup-criu.sh installs: `$LXCR_CACHE_DIR/criu/bin/criu`, default `<repo>/.cache/...`. */
export function cachedCriuPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(resolve(env.LXCR_CACHE_DIR ?? join(REPO_DIR, '.cache')), 'criu', 'bin', 'criu');
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The first executable called `program` on PATH, like `command -v`. */
export function findOnPath(program: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  return (env.PATH ?? '')
    .split(delimiter)
    .filter((dir) => dir !== '')
    .map((dir) => join(dir, program))
    .find(isExecutable);
}

/**
 * Finds the criu to use: `$LXCR_CRIU`, then the cached build, then `criu` on PATH. Only existence is checked
 * here; {@link checkCriu} tells whether it works on this kernel.
 */
export function resolveCriuPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.LXCR_CRIU) {
    if (!isExecutable(env.LXCR_CRIU)) {
      throw new ToolMissingError('criu', `LXCR_CRIU=${env.LXCR_CRIU} is not an executable file; ${CRIU_SETUP_HINT}`);
    }
    return resolve(env.LXCR_CRIU);
  }
  const cached = cachedCriuPath(env);
  const found = isExecutable(cached) ? cached : findOnPath('criu', env);
  if (!found) throw new ToolMissingError('criu', `no cached build at ${cached} and none on PATH; ${CRIU_SETUP_HINT}`);
  return found;
}

/**
 * Runs `criu check`. Returns undefined when it passes, otherwise a ToolMissingError saying why and how to get
 * a working criu (Debian bookworm's 3.17 fails on recent kernels: "Unexpected rt vDSO area bounds").
 */
export async function checkCriu(criuPath: string): Promise<ToolMissingError | undefined> {
  if (!isExecutable(criuPath)) {
    return new ToolMissingError('criu', `${criuPath} is not an executable file; ${CRIU_SETUP_HINT}`);
  }
  const result = await run(criuPath, ['check'], { allowFailure: true, timeoutMs: 30_000 });
  if (result.exitCode === 0 && result.stdout.includes('Looks good')) return undefined;
  const reason = criuErrorLines(`${result.stdout}\n${result.stderr}`).at(-1) ?? `exit code ${result.exitCode}`;
  return new ToolMissingError('criu', `'${criuPath} check' fails on this kernel (${reason}); ${CRIU_SETUP_HINT}`);
}

/** CRIU logs this as an error on every run as root in our hosts; it is never why a dump or restore failed. */
const HARMLESS_ERROR = /RLIMIT_NOFILE/;

/** The error lines of a CRIU log text, the harmless one left out, in log order. */
export function criuErrorLines(logText: string): string[] {
  return logText
    .split('\n')
    .filter((line) => /\bError\b/.test(line) && !HARMLESS_ERROR.test(line))
    .map((line) => line.trim());
}

/**
 * The error lines of a CRIU log file (dump.log / restore.log); empty when there is no log. A long list keeps its
 * head, where the cause usually is, and its tail, where CRIU says what gave up.
 */
export async function readCriuLogErrors(logFile: string, head = 10, tail = 4): Promise<string[]> {
  let lines: string[];
  try {
    lines = criuErrorLines(await readFile(logFile, 'utf8'));
  } catch {
    return [];
  }
  if (lines.length <= head + tail) return lines;
  return [...lines.slice(0, head), `... ${lines.length - head - tail} more ...`, ...lines.slice(-tail)];
}
