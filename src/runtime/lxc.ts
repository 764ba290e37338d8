/**
 * The LXC driver: a ContainerRuntime over the lxc-* tools of LXC 5.0, one lxcpath per runtime (every call
 * passes it with -P). Checkpoint and restore go through lxc-checkpoint, which runs CRIU.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { delimiter, dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  AlreadyExistsError,
  CheckpointError,
  CommandFailedError,
  errorMessage,
  FailedPreconditionError,
  InvalidArgumentError,
  lastLines,
  NotFoundError,
  RestoreError,
  TimeoutError,
  ToolMissingError,
} from '../util/errors.ts';
import { run, type RunOptions } from '../util/exec.ts';
import { createLogger, type Logger } from '../util/log.ts';
import { processTree, readProcStat } from '../util/proc.ts';
import { checkCriu, findOnPath, readCriuLogErrors, resolveCriuPath } from './criu.ts';
import { captureEnvironment, DEFAULT_OPEN_FILES_MAX_BYTES, postDumpActionScript, putBackOpenFiles, readCaptureReport } from './open-files.ts';
import {
  CONTAINER_DIR_PLACEHOLDER,
  isContainerState,
  type CheckpointOptions,
  type ExportedContainer,
  type ImportedFiles,
  type CheckpointResult,
  type ContainerRuntime,
  type ContainerState,
  type RestoreResult,
  type StopOptions,
} from './runtime.ts';

const LXC_HINT = 'install the Debian package lxc (apt-get install lxc)';

/**
 * A conservative subset of what LXC accepts: the name becomes a directory under the lxcpath, part of the
 * monitor's abstract socket and cgroup names, and the container's hostname, so anything that could escape
 * the lxcpath ('/', '..'), read as an option (leading '-') or break a path or hostname is refused.
 */
const CONTAINER_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export function validateContainerName(name: unknown): string {
  if (typeof name !== 'string' || !CONTAINER_NAME.test(name)) {
    throw new InvalidArgumentError(
      `invalid container name ${JSON.stringify(name)}: use 1-64 letters, digits, '.', '_' or '-', ` +
        'starting with a letter or digit',
    );
  }
  return name;
}

/**
 * Rewrites the paths in a container's configuration after its directory moved (a copy on another host or
 * lxcpath): every path under `fromDir` now points under `toDir`.
 */
export function relocateLxcConfig(configText: string, fromDir: string, toDir: string): string {
  const escaped = fromDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  // Whole paths only: starting a value (after '=', ':' as in "dir:", or a space) and ending at a separator.
  return configText.replace(new RegExp(`(?<![^\\s:=])${escaped}(?=/|\\s|$)`, 'gm'), toDir);
}

// iptables is not installed on our hosts; without this CRIU's network lock (dump) fails.
const CRIU_CONFIG =
  '# Written by LXCloud-CR; lxc-checkpoint passes it to CRIU via CRIU_CONFIG_FILE.\nnetwork-lock nftables\n';

/** What lxc-checkpoint runs with: PATH finding our criu, and CRIU's config without and with the open-file capture. */
interface CriuEnvironment {
  plain: NodeJS.ProcessEnv;
  capturing: NodeJS.ProcessEnv;
}

export interface LxcRuntimeOptions {
  /** The directory holding this host's containers (`lxc-* -P`). Relative paths are resolved. */
  lxcpath: string;
  /** The criu binary lxc-checkpoint must run. Default: {@link resolveCriuPath}, on the first checkpoint/restore. */
  criuPath?: string;
  /** Run CRIU at full verbosity (lxc-checkpoint -v): detailed, and for big dumps large, dump.log/restore.log. */
  verbose?: boolean;
  /** Limit for ordinary lxc-* commands, ms. Default 60 s. */
  commandTimeoutMs?: number;
  /** Limit for one dump or restore, ms. Default 5 min (a GiB-sized dump takes seconds). */
  checkpointTimeoutMs?: number;
  /**
   * Before restoring images dumped (with `stop`) on this machine: how long to wait for the dumped processes to
   * leave the process table, ms. Default 15 s.
   */
  oldProcessesTimeoutMs?: number;
  /**
   * Most bytes of open files a dump that leaves the container running copies during the freeze (see
   * CheckpointOptions.captureOpenFiles); files beyond it are left to the rootfs archive, with a warning. Default 64 MiB.
   */
  openFilesMaxBytes?: number;
  logger?: Logger;
}

interface CompiledOptions extends Required<Omit<LxcRuntimeOptions, 'criuPath'>> {
  criuPath: string | undefined;
}

function compileOptions(options: LxcRuntimeOptions): CompiledOptions {
  if (typeof options.lxcpath !== 'string' || options.lxcpath === '') {
    throw new InvalidArgumentError('lxcpath: must be a non-empty path');
  }
  const positive = (key: keyof LxcRuntimeOptions, fallback: number): number => {
    const value = options[key] ?? fallback;
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      throw new InvalidArgumentError(`${key}: must be a positive number of milliseconds`);
    }
    return value;
  };
  const nonNegativeInteger = (value: unknown): number => {
    if (!Number.isSafeInteger(value) || (value as number) < 0) {
      throw new InvalidArgumentError('openFilesMaxBytes: must be a whole number of bytes, 0 or more');
    }
    return value as number;
  };
  return {
    // LXC names a container's command socket after the lxcpath string it was started with: a relative path
    // makes a running container look STOPPED to any caller that spells the path differently.
    lxcpath: resolve(options.lxcpath),
    criuPath: options.criuPath === undefined ? undefined : resolve(options.criuPath),
    verbose: options.verbose ?? false,
    commandTimeoutMs: positive('commandTimeoutMs', 60_000),
    checkpointTimeoutMs: positive('checkpointTimeoutMs', 300_000),
    oldProcessesTimeoutMs: positive('oldProcessesTimeoutMs', 15_000),
    openFilesMaxBytes: nonNegativeInteger(options.openFilesMaxBytes ?? DEFAULT_OPEN_FILES_MAX_BYTES),
    logger: options.logger ?? createLogger('runtime.lxc'),
  };
}

/** A process as it was when we looked: the start time tells it apart from a later process reusing its PID. */
interface ProcessIdentity {
  pid: number;
  startTime: string;
}

/** Whether the process is still in the process table, as a zombie or alive. */
async function isStillPresent(identity: ProcessIdentity): Promise<boolean> {
  return (await readProcStat(identity.pid))?.startTime === identity.startTime;
}

/** SIGKILLs a process and all its descendants (a process group is not enough: CRIU's tasks leave it). */
async function killProcessTree(rootPid: number): Promise<void> {
  for (const { pid } of await processTree(rootPid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

async function replaceAtomically(target: string, create: (temporary: string) => Promise<void>): Promise<void> {
  const temporary = `${target}.${process.pid}.${randomBytes(4).toString('hex')}`;
  await create(temporary);
  await rename(temporary, target);
}

/** Moves a directory by renaming it; across filesystems (EXDEV) by copying it, owners and modes kept, then deleting it. */
async function moveDirectory(from: string, to: string, timeoutMs: number): Promise<void> {
  try {
    await rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await run('cp', ['-a', '--', from, to], { timeoutMs });
    await rm(from, { recursive: true, force: true });
  }
}

/**
 * Kept beside the images of a stopping dump: the container's processes at dump time and the machine they ran
 * on, so that a restore on the same machine (any lxcpath, any process) can wait until they are gone.
 */
const DUMPED_PROCESSES_FILE = 'lxcr-dumped-processes.json';

interface DumpedProcesses {
  bootId: string;
  processes: ProcessIdentity[];
}

async function machineBootId(): Promise<string> {
  return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
}

/** The record of a stopping dump; undefined when there is none or it is unreadable (then nothing to wait for). */
async function readDumpedProcesses(imagesDir: string): Promise<DumpedProcesses | undefined> {
  try {
    const text = await readFile(join(imagesDir, DUMPED_PROCESSES_FILE), 'utf8');
    const record = JSON.parse(text) as Partial<DumpedProcesses>;
    const valid =
      typeof record.bootId === 'string' &&
      Array.isArray(record.processes) &&
      record.processes.every((p) => Number.isInteger(p.pid) && typeof p.startTime === 'string');
    return valid ? (record as DumpedProcesses) : undefined;
  } catch {
    return undefined;
  }
}

async function imageBytes(imagesDir: string): Promise<number> {
  const entries = await readdir(imagesDir, { withFileTypes: true });
  const sizes = await Promise.all(
    entries
      .filter((entry) => entry.isFile() && !entry.name.endsWith('.log') && entry.name !== DUMPED_PROCESSES_FILE)
      .map(async (entry) => (await stat(join(imagesDir, entry.name))).size),
  );
  return sizes.reduce((sum, size) => sum + size, 0);
}

/** A state LXC printed for a container, checked: any state this runtime does not know is an error, never guessed. */
function knownState(name: string, state: string): ContainerState {
  if (!isContainerState(state)) {
    throw new FailedPreconditionError(`container ${name} is in state "${state}", which this runtime does not know`);
  }
  return state;
}

/**
 * `lxc-ls --fancy --fancy-format NAME,STATE`: a header line, then one `<name> <state>` line per container (no
 * output at all for none). Container names never hold whitespace (validateContainerName).
 */
export function parseFancyStates(stdout: string): Map<string, ContainerState> {
  const rows = stdout.split('\n').map((line) => line.trim().split(/\s+/)).filter((fields) => fields[0] !== '');
  if (rows[0]?.[0] === 'NAME' && rows[0]?.[1] === 'STATE') rows.shift();
  const states = new Map<string, ContainerState>();
  for (const [name, state, ...rest] of rows.sort((a, b) => (a[0]! < b[0]! ? -1 : 1))) {
    if (name === undefined || state === undefined || rest.length > 0) {
      throw new FailedPreconditionError(`lxc-ls printed "${[name, state, ...rest].join(' ')}", not a container name and a state`);
    }
    states.set(name, knownState(name, state));
  }
  return states;
}

interface DetachedRunResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  output: string;
}

/**
 * Runs a program in its own session with its output going to a file, and waits for its exit only.
 * `lxc-checkpoint -r` becomes the restored container's monitor without daemonizing: the monitor keeps the
 * caller's stdout/stderr and process group. Through pipes the call would never complete (the pipes stay open
 * while the container runs), and a signal to our process group would take the container down. On timeout
 * the whole process tree is killed: a half-done restore leaves CRIU tasks that would otherwise run on.
 */
async function runDetached(
  program: string,
  args: readonly string[],
  options: { env: NodeJS.ProcessEnv; timeoutMs: number; outputFile: string },
): Promise<DetachedRunResult> {
  const output = await open(options.outputFile, 'w');
  try {
    const child = spawn(program, args, {
      env: { ...process.env, ...options.env },
      detached: true,
      stdio: ['ignore', output.fd, output.fd],
    });
    const { exitCode, signal } = await new Promise<Omit<DetachedRunResult, 'output'>>((resolveExit, reject) => {
      const timer = setTimeout(() => {
        const timedOut = new TimeoutError(`${program} ${args.join(' ')} did not finish within ${options.timeoutMs} ms`);
        void (child.pid === undefined ? Promise.resolve() : killProcessTree(child.pid)).finally(() => reject(timedOut));
      }, options.timeoutMs);
      child.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(err.code === 'ENOENT' ? new ToolMissingError(program, LXC_HINT, { cause: err }) : err);
      });
      child.once('exit', (code, sig) => {
        clearTimeout(timer);
        resolveExit({ exitCode: code, signal: sig });
      });
    });
    return { exitCode, signal, output: await readFile(options.outputFile, 'utf8') };
  } finally {
    await output.close();
  }
}

/**
 * A failure message that puts CRIU's own error lines first, then where to read more; and its summary on one line:
 * what failed and all of CRIU's errors (the first is not always the cause: a missing iptables-restore is logged
 * before the file CRIU could not open).
 */
async function describeCriuFailure(what: string, criuLog: string, err: unknown): Promise<{ message: string; summary: string }> {
  const criuErrors = await readCriuLogErrors(criuLog);
  const reported = criuErrors.length > 0 ? `; CRIU reported:\n  ${criuErrors.join('\n  ')}` : '';
  const summaryErrors = criuErrors.map((line) => line.trim()).filter((line) => line !== '');
  return {
    message: `${what} failed${reported}\nCRIU log: ${criuLog}\n${errorMessage(err)}`,
    summary: `${what} failed${criuErrors.length > 0 ? `; CRIU reported:${summaryErrors.map((line) => ` ${line}`).join('')}` : ''}`,
  };
}

/** The rootfs directory a container config names (the last lxc.rootfs.path wins); directory rootfs only. */
function rootfsFromConfig(config: string, containerDir: string): string {
  const value = [...config.matchAll(/^\s*lxc\.rootfs\.path\s*=\s*(.*?)\s*$/gm)].at(-1)?.[1];
  if (value === undefined || value === '') return join(containerDir, 'rootfs');
  if (value.startsWith('dir:')) return value.slice('dir:'.length);
  if (value.startsWith('/')) return value;
  throw new FailedPreconditionError(`rootfs "${value}" of ${containerDir}: only directory rootfs ("dir:" or a plain path) can be snapshotted`);
}

/**
 * The rootfs as a tar stream. GNU tar exits 1 when a file changed while it was read (a running container's
 * rootfs does); the archive is still complete, so only a fatal exit (2) fails the stream.
 */
async function* tarStream(rootfs: string): AsyncGenerator<Uint8Array> {
  // Sorted by name: the same tree gives the same archive, whatever order the directories list their entries in
  // (a rootfs re-extracted on restore lists them differently), so unchanged files stay in unchanged chunks.
  const argv = ['--numeric-owner', '--sort=name', '-C', rootfs, '-cf', '-', '.'];
  const child = spawn('tar', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4096)));
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', resolve);
  });
  try {
    for await (const piece of child.stdout) yield piece as Buffer;
    const code = await exited;
    if (code !== 0 && code !== 1) throw new CommandFailedError(['tar', ...argv], code, null, '', stderr);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}

export class LxcRuntime implements ContainerRuntime {
  readonly lxcpath: string;
  private readonly options: CompiledOptions;
  private readonly log: Logger;
  /** Files lxc-checkpoint needs, beside the containers: CRIU's config and a PATH entry for our criu. */
  private readonly runtimeDir: string;
  private criuEnvironment: Promise<CriuEnvironment> | undefined;

  constructor(options: LxcRuntimeOptions) {
    this.options = compileOptions(options);
    this.lxcpath = this.options.lxcpath;
    this.log = this.options.logger;
    // lxc-ls only lists directories holding a `config` file, so this one is never taken for a container.
    this.runtimeDir = join(this.lxcpath, '.lxcr');
  }

  configPath(name: string): string {
    return join(this.containerDir(name), 'config');
  }

  async rootfsPath(name: string): Promise<string> {
    await this.requireExisting(name);
    return rootfsFromConfig(await readFile(this.configPath(name), 'utf8'), this.containerDir(name));
  }

  async list(): Promise<string[]> {
    const { stdout } = await this.lxc('lxc-ls', undefined, ['-1']);
    return stdout
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '')
      .sort();
  }

  async exists(name: string): Promise<boolean> {
    try {
      return (await stat(this.configPath(name))).isFile();
    } catch {
      return false;
    }
  }

  async state(name: string): Promise<ContainerState> {
    await this.requireExisting(name);
    const { stdout } = await this.lxc('lxc-info', name, ['-s', '-H']);
    return knownState(name, stdout.trim());
  }

  async states(): Promise<Map<string, ContainerState>> {
    const { stdout } = await this.lxc('lxc-ls', undefined, ['--fancy', '--fancy-format', 'NAME,STATE']);
    return parseFancyStates(stdout);
  }

  async start(name: string): Promise<void> {
    await this.requireState(name, 'STOPPED', 'start');
    // lxc-start daemonizes the monitor properly and returns once the container runs.
    await this.lxc('lxc-start', name, []);
  }

  async stop(name: string, options: StopOptions = {}): Promise<void> {
    if ((await this.state(name)) === 'STOPPED') return;
    const graceSeconds = Math.ceil((options.timeoutMs ?? 30_000) / 1000);
    await this.lxc('lxc-stop', name, options.kill ? ['-k'] : ['-t', String(graceSeconds)], {
      timeoutMs: this.options.commandTimeoutMs + graceSeconds * 1000,
    });
  }

  async destroy(name: string): Promise<void> {
    await this.requireState(name, 'STOPPED', 'destroy');
    await this.lxc('lxc-destroy', name, []);
  }

  async checkpoint(name: string, imagesDir: string, options: CheckpointOptions): Promise<CheckpointResult> {
    const dir = resolve(imagesDir);
    await this.requireState(name, 'RUNNING', 'checkpoint');
    const criu = await this.prepareCriu();
    await mkdir(dir, { recursive: true });
    if ((await readdir(dir)).length > 0) {
      throw new FailedPreconditionError(`images directory ${dir} is not empty; a checkpoint needs an empty one`);
    }
    const oldProcesses = options.stop ? await this.containerProcesses(name) : [];
    const capture = !options.stop && (options.captureOpenFiles ?? true);
    const env = capture ? { ...criu.capturing, ...captureEnvironment(dir, this.options.openFilesMaxBytes) } : criu.plain;

    const started = performance.now();
    try {
      await this.lxc('lxc-checkpoint', name, ['-D', dir, ...(options.stop ? ['-s'] : []), ...this.verboseFlag()], {
        env,
        timeoutMs: this.options.checkpointTimeoutMs,
      });
    } catch (err) {
      throw new CheckpointError((await describeCriuFailure(`checkpoint of ${name}`, join(dir, 'dump.log'), err)).message, {
        cause: err,
      });
    }
    const dumpMs = performance.now() - started;
    const openFiles = capture ? await readCaptureReport(name, dir) : undefined;
    if (openFiles && openFiles.skipped.length > 0) {
      this.log.warn('open files too large to copy during the freeze; the snapshot relies on the rootfs archive for them', {
        name,
        openFilesMaxBytes: this.options.openFilesMaxBytes,
        skipped: openFiles.skipped,
      });
    }
    if (options.stop) {
      const record: DumpedProcesses = { bootId: await machineBootId(), processes: oldProcesses };
      await writeFile(join(dir, DUMPED_PROCESSES_FILE), JSON.stringify(record));
    }
    const result = { imagesDir: dir, dumpMs, imageBytes: await imageBytes(dir), capturedOpenFiles: openFiles?.captured.length ?? 0 };
    this.log.info('checkpointed container', { name, stop: options.stop, ...result });
    return result;
  }

  async restore(name: string, imagesDir: string): Promise<RestoreResult> {
    const dir = resolve(imagesDir);
    await this.requireState(name, 'STOPPED', 'restore');
    try {
      await stat(join(dir, 'inventory.img'));
    } catch (err) {
      throw new NotFoundError(`no checkpoint images in ${dir} (inventory.img missing)`, { cause: err });
    }
    const env = (await this.prepareCriu()).plain;
    const openFilesPutBack = await putBackOpenFiles(name, dir, await this.rootfsPath(name));
    const waitedForOldProcessesMs = await this.waitForDumpedProcesses(name, dir);

    const argv = ['-P', this.lxcpath, '-n', name, '-D', dir, '-r', ...this.verboseFlag()];
    const outputFile = join(this.containerDir(name), 'lxc-checkpoint-restore.out');
    const started = performance.now();
    const failure = async (err: unknown): Promise<RestoreError> => {
      const { message, summary } = await describeCriuFailure(`restore of ${name}`, join(dir, 'restore.log'), err);
      return new RestoreError(message, { cause: err, summary });
    };
    let result: DetachedRunResult;
    try {
      const timeoutMs = this.options.checkpointTimeoutMs;
      result = await runDetached('lxc-checkpoint', argv, { env, timeoutMs, outputFile });
    } catch (err) {
      throw await failure(err);
    }
    if (result.exitCode !== 0) {
      throw await failure(
        new CommandFailedError(['lxc-checkpoint', ...argv], result.exitCode, result.signal, '', result.output),
      );
    }
    const restoreMs = performance.now() - started;
    const state = await this.state(name);
    if (state !== 'RUNNING') {
      const output = lastLines(result.output, 5);
      throw await failure(new Error(`lxc-checkpoint succeeded but the container is ${state}: ${output}`));
    }
    this.log.info('restored container', { name, imagesDir: dir, restoreMs, waitedForOldProcessesMs, openFilesPutBack });
    return { restoreMs, waitedForOldProcessesMs };
  }

  private containerDir(name: string): string {
    return join(this.lxcpath, validateContainerName(name));
  }

  private lxc(tool: string, name: string | undefined, args: readonly string[], options: RunOptions = {}) {
    const target = name === undefined ? [] : ['-n', validateContainerName(name)];
    return run(tool, ['-P', this.lxcpath, ...target, ...args], {
      timeoutMs: this.options.commandTimeoutMs,
      missingHint: LXC_HINT,
      ...options,
    });
  }

  async exportFiles(name: string): Promise<ExportedContainer> {
    const rootfs = await this.rootfsPath(name);
    const dir = this.containerDir(name);
    const config = relocateLxcConfig(await readFile(this.configPath(name), 'utf8'), dir, CONTAINER_DIR_PLACEHOLDER);
    if (!config.includes(CONTAINER_DIR_PLACEHOLDER) || !rootfs.startsWith(`${dir}/`)) {
      throw new FailedPreconditionError(`container ${name}'s rootfs ${rootfs} is outside its directory ${dir}: it cannot be moved to another host`);
    }
    return { config: Buffer.from(config), openRootfsTar: () => tarStream(rootfs) };
  }

  async importFiles(name: string, files: ImportedFiles): Promise<void> {
    validateContainerName(name);
    if (await this.exists(name)) throw new AlreadyExistsError(`container ${name} already exists in ${this.lxcpath}`);
    const dir = this.containerDir(name);
    const config = files.config.toString('utf8').replaceAll(CONTAINER_DIR_PLACEHOLDER, dir);
    await mkdir(dir, { recursive: true, mode: 0o750 });
    // The config goes last: until it exists the half-imported directory is no container at all.
    const rootfs = rootfsFromConfig(config, dir);
    if ('rootfsDir' in files) {
      await mkdir(dirname(rootfs), { recursive: true });
      await rm(rootfs, { recursive: true, force: true }); // a leftover of an interrupted import: no container yet
      await moveDirectory(files.rootfsDir, rootfs, this.options.checkpointTimeoutMs);
    } else {
      await mkdir(rootfs, { recursive: true });
      await this.unpackRootfs(files.rootfsTarPath, rootfs);
    }
    await writeFile(this.configPath(name), config);
  }

  async unpackRootfs(tarPath: string, targetDir: string): Promise<void> {
    await run('tar', ['--numeric-owner', '-xpf', tarPath, '-C', targetDir], { timeoutMs: this.options.checkpointTimeoutMs });
  }

  private verboseFlag(): string[] {
    return this.options.verbose ? ['-v'] : [];
  }

  private async requireExisting(name: string): Promise<void> {
    validateContainerName(name);
    if (!(await this.exists(name))) throw new NotFoundError(`no container ${name} in ${this.lxcpath}`);
  }

  private async requireState(name: string, wanted: ContainerState, operation: string): Promise<void> {
    const state = await this.state(name);
    if (state !== wanted) {
      throw new FailedPreconditionError(`cannot ${operation} container ${name}: it is ${state}, not ${wanted}`);
    }
  }

  /**
   * Checks lxc-checkpoint and criu once per runtime (retried after a failure) and writes what lxc-checkpoint
   * needs. LXC 5.0 finds criu only by looking up `criu` on PATH (no config key), so a directory holding a
   * `criu` link to our binary goes first on PATH; CRIU reads its extra options from CRIU_CONFIG_FILE.
   */
  private prepareCriu(): Promise<CriuEnvironment> {
    this.criuEnvironment ??= this.writeCriuEnvironment().catch((err: unknown) => {
      this.criuEnvironment = undefined;
      throw err;
    });
    return this.criuEnvironment;
  }

  private async writeCriuEnvironment(): Promise<CriuEnvironment> {
    if (!findOnPath('lxc-checkpoint')) throw new ToolMissingError('lxc-checkpoint', LXC_HINT);
    const criuPath = this.options.criuPath ?? resolveCriuPath();
    const problem = await checkCriu(criuPath);
    if (problem) throw problem;
    const binDir = join(this.runtimeDir, 'bin');
    const configFile = join(this.runtimeDir, 'criu.conf');
    const capturingConfigFile = join(this.runtimeDir, 'criu-capturing.conf');
    const actionScript = join(this.runtimeDir, 'post-dump.sh');
    // CRIU reads its config as whitespace-separated words and runs an action script through `sh -c <path>`.
    if (!/^[\w/.+@:-]+$/.test(actionScript)) {
      throw new FailedPreconditionError(
        `lxcpath ${this.lxcpath}: CRIU cannot run an action script under it (whitespace or shell characters in the path); use a plain path`,
      );
    }
    await mkdir(binDir, { recursive: true });
    await replaceAtomically(join(binDir, 'criu'), (temporary) => symlink(criuPath, temporary));
    await replaceAtomically(actionScript, (temporary) => writeFile(temporary, postDumpActionScript(), { mode: 0o755 }));
    await replaceAtomically(configFile, (temporary) => writeFile(temporary, CRIU_CONFIG));
    await replaceAtomically(capturingConfigFile, (temporary) => writeFile(temporary, `${CRIU_CONFIG}action-script ${actionScript}\n`));
    const PATH = `${binDir}${delimiter}${process.env.PATH ?? ''}`;
    return { plain: { PATH, CRIU_CONFIG_FILE: configFile }, capturing: { PATH, CRIU_CONFIG_FILE: capturingConfigFile } };
  }

  /** The container's monitor, its init and init's descendants, as the host sees them. */
  private async containerProcesses(name: string): Promise<ProcessIdentity[]> {
    const { stdout } = await this.lxc('lxc-info', name, ['-p', '-H']);
    const initPid = Number(stdout.trim());
    if (!Number.isInteger(initPid) || initPid <= 0) return [];
    const tree = await processTree(initPid);
    const monitor = tree[0] ? await readProcStat(tree[0].parentPid) : undefined;
    return (monitor ? [monitor, ...tree] : tree).map(({ pid, startTime }) => ({ pid, startTime }));
  }

  /**
   * Waits until the processes dumped into `imagesDir` are gone from this machine, zombies included (the host's
   * PID 1 may reap a stopped container's monitor only after a second or two): restoring before that can fail
   * with "Can't fork for N: File exists". Images from another machine need no wait. On timeout it warns and
   * lets the restore try. Returns the time waited.
   */
  private async waitForDumpedProcesses(name: string, imagesDir: string): Promise<number> {
    const dumped = await readDumpedProcesses(imagesDir);
    if (!dumped || dumped.bootId !== (await machineBootId())) return 0;
    const started = performance.now();
    const deadline = started + this.options.oldProcessesTimeoutMs;
    let remaining = dumped.processes;
    for (;;) {
      const alive = await Promise.all(remaining.map(isStillPresent));
      remaining = remaining.filter((_, i) => alive[i]);
      if (remaining.length === 0) break;
      if (performance.now() > deadline) {
        this.log.warn('processes of the dumped container are still there; restoring anyway', {
          name,
          pids: remaining.map((p) => p.pid),
        });
        break;
      }
      await new Promise((wake) => setTimeout(wake, 25));
    }
    return performance.now() - started;
  }
}
