/**
 * The container side of the local testbed: simulated hosts (one lxcpath each, on this machine) and a busybox
 * "counter" container whose state lives only in process memory, so a checkpoint/restore that loses memory is
 * caught. Configured for CRIU as ENVIRONMENT.md (LXC section) requires.
 */
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { errorMessage, TestbedError } from '../src/util/errors.ts';
import { run } from '../src/util/exec.ts';
import { createLogger } from '../src/util/log.ts';
import { processTree, readProcStat } from '../src/util/proc.ts';
import { LxcRuntime, relocateLxcConfig, validateContainerName, type LxcRuntimeOptions } from '../src/runtime/lxc.ts';

const log = createLogger('testbed.lxc');

/** A simulated host: its own lxcpath on this machine. */
export interface LxcHost {
  readonly hostId: string;
  readonly lxcpath: string;
}

export interface CounterContainerOptions {
  /** Also hold this many MiB in a process's anonymous memory (see {@link MEMORY_SCRIPT}). */
  memoryMiB?: number;
  /** Also run a process holding {@link HELD_FILE} open (see {@link HOLDER_SCRIPT}). */
  holdOpenFile?: boolean;
}

/** Where the workload reports, inside the container's rootfs. It only ever writes these files. */
const REPORT_DIR = 'var/lxcr';
const COUNTER_FILE = `${REPORT_DIR}/counter`;
const MEMORY_GENERATION_FILE = `${REPORT_DIR}/memory-generation`;
const MEMORY_REQUEST_FILE = `${REPORT_DIR}/memory-request`;
const COUNTER_PROGRAM = 'bin/lxcr-counter';
const MEMORY_PROGRAM = 'bin/lxcr-memory';
const HOLDER_PROGRAM = 'bin/lxcr-holder';
/** The file the holder keeps open, inside the rootfs. */
export const HELD_FILE = `${REPORT_DIR}/held`;

/**
 * Counts in a shell variable about every 150 ms and reports each value by write-then-rename (a reader never
 * sees a partial file). It never reads the report back: after a restore that lost its memory it starts at 1.
 */
const COUNTER_SCRIPT = `#!/bin/sh
count=0
while :; do
  count=$((count + 1))
  echo "$count" > /${COUNTER_FILE}.tmp
  mv /${COUNTER_FILE}.tmp /${COUNTER_FILE}
  sleep 0.15
done
`;

/**
 * Holds $1 MiB in busybox awk's heap: an array of 1 MiB strings, each its own anonymous allocation, resident
 * because it was written. A shell variable or a tmpfs file would not do (tmpfs pages belong to no process,
 * and CRIU does not dump them as process memory). The content is base64 of /dev/urandom so pages are
 * distinct: neither CRIU's zero-page handling nor a chunk store's deduplication shrinks it unrealistically.
 * Writing "<generation> <MiB>" to the request file rewrites the first <MiB> blocks with new random content
 * (a benchmark's "changed memory"); the applied generation is reported, 0 once the initial fill is done.
 */
const MEMORY_SCRIPT = `#!/bin/sh
exec awk -v mib="$1" '
function fill(count,   i, source) {
  if (count > mib) count = mib
  source = "head -c " count * 786432 " /dev/urandom | base64 -w 1048576"
  for (i = 0; i < count; i++) source | getline block[i]
  close(source)
}
function report(generation,   temporary) {
  temporary = "/${MEMORY_GENERATION_FILE}.tmp"
  print generation > temporary
  close(temporary)
  system("mv " temporary " /${MEMORY_GENERATION_FILE}")
}
BEGIN {
  fill(mib)
  applied = 0
  report(applied)
  for (;;) {
    if ((getline request < "/${MEMORY_REQUEST_FILE}") > 0 && split(request, field, " ") == 2 && field[1] != applied) {
      fill(field[2])
      applied = field[1]
      report(applied)
    }
    close("/${MEMORY_REQUEST_FILE}")
    system("sleep 0.2")
  }
}'
`;

/**
 * Keeps HELD_FILE open read-write (not appending: CRIU then checks its size on restore), as a database holds its
 * data file: the shell opens it on fd 3, writes a line, and becomes a sleep that inherits the descriptor.
 */
const HOLDER_SCRIPT = `#!/bin/sh
exec 3<>/${HELD_FILE}
echo "opened by $$" >&3
exec sleep 2147483647
`;

/**
 * The workload starts from the container's own init: processes put in by lxc-attach inherit host file
 * descriptors and cannot be dumped. No sysinit (the template's rcS starts syslogd and udhcpc, pointless
 * without a network) and no getty/askfirst (a console or tty cannot be checkpointed here).
 */
function inittab({ memoryMiB, holdOpenFile }: CounterContainerOptions): string {
  const memory = memoryMiB === undefined ? '' : `::once:/${MEMORY_PROGRAM} ${memoryMiB}\n`;
  const holder = holdOpenFile ? `::once:/${HOLDER_PROGRAM}\n` : '';
  return `::once:/${COUNTER_PROGRAM}\n${memory}${holder}`;
}

/** Template lines replaced by {@link CHECKPOINTABLE_CONFIG}. */
const REPLACED_CONFIG = [
  /^lxc\.net\./,
  // With any lxc.apparmor.profile line LXC hands CRIU an AppArmor profile, and restore fails (no AppArmor).
  /^lxc\.apparmor\./,
  /^lxc\.tty\.max\b/,
  /^lxc\.console\./,
  // The template bind-mounts /lib and /lib64, symlinks to usr/ on bookworm, which breaks restore.
  /^lxc\.mount\.entry\s*=\s*\/(usr\/)?lib(64)?\s/,
];

const CHECKPOINTABLE_CONFIG = `
# LXCloud-CR: settings checkpoint/restore needs on our hosts (ENVIRONMENT.md, LXC section).
lxc.net.0.type = empty
lxc.tty.max = 0
lxc.console.path = none
lxc.mount.entry = /usr/lib usr/lib none ro,bind 0 0
lxc.mount.entry = /usr/lib64 usr/lib64 none ro,bind 0 0
`;

export function runtimeFor(host: LxcHost, options: Omit<LxcRuntimeOptions, 'lxcpath'> = {}): LxcRuntime {
  return new LxcRuntime({ ...options, lxcpath: host.lxcpath, logger: log.child(host.hostId) });
}

/** Makes a simulated host: `lxcpath` is created (the caller owns it, e.g. `<runDir>/hosts/host2/lxc`). */
export async function createLxcHost(hostId: string, lxcpath: string): Promise<LxcHost> {
  const host = { hostId, lxcpath: resolve(lxcpath) };
  await mkdir(host.lxcpath, { recursive: true });
  return host;
}

async function writeAtomically(file: string, content: string): Promise<void> {
  await writeFile(`${file}.tmp`, content);
  await rename(`${file}.tmp`, file);
}

/** Creates (does not start) a busybox counter container configured for checkpoint/restore. */
export async function createCounterContainer(
  host: LxcHost,
  name: string,
  options: CounterContainerOptions = {},
): Promise<void> {
  const { memoryMiB } = options;
  if (memoryMiB !== undefined && (!Number.isInteger(memoryMiB) || memoryMiB <= 0)) {
    throw new TestbedError(`memoryMiB must be a positive integer, got ${memoryMiB}`);
  }
  const runtime = runtimeFor(host);
  await run('lxc-create', ['-P', host.lxcpath, '-n', validateContainerName(name), '-t', 'busybox'], {
    missingHint: 'install the Debian packages lxc and busybox-static',
  });
  const configPath = runtime.configPath(name);
  const template = await readFile(configPath, 'utf8');
  const kept = template.split('\n').filter((line) => !REPLACED_CONFIG.some((pattern) => pattern.test(line.trim())));
  await writeFile(configPath, `${kept.join('\n').trimEnd()}\n${CHECKPOINTABLE_CONFIG}`);

  const rootfs = await runtime.rootfsPath(name);
  await mkdir(join(rootfs, REPORT_DIR), { recursive: true });
  await writeFile(join(rootfs, COUNTER_PROGRAM), COUNTER_SCRIPT, { mode: 0o755 });
  if (memoryMiB !== undefined) await writeFile(join(rootfs, MEMORY_PROGRAM), MEMORY_SCRIPT, { mode: 0o755 });
  if (options.holdOpenFile) await writeFile(join(rootfs, HOLDER_PROGRAM), HOLDER_SCRIPT, { mode: 0o755 });
  await writeFile(join(rootfs, 'etc/inittab'), inittab(options));
}

/** Creates a counter container, starts it and waits until it runs and reports. */
export async function runCounterContainer(host: LxcHost, name: string, options: CounterContainerOptions = {}, timeoutMs?: number): Promise<void> {
  await createCounterContainer(host, name, options);
  await startContainer(host, name);
  await waitRunning(host, name, timeoutMs);
}

/** Cold-starts a container. The reports of its previous life are removed first, so they cannot be mistaken. */
export async function startContainer(host: LxcHost, name: string): Promise<void> {
  const runtime = runtimeFor(host);
  const rootfs = await runtime.rootfsPath(name);
  await Promise.all(
    [COUNTER_FILE, MEMORY_GENERATION_FILE, MEMORY_REQUEST_FILE].map((file) => rm(join(rootfs, file), { force: true })),
  );
  await runtime.start(name);
}

async function readReport(host: LxcHost, name: string, file: string): Promise<number | undefined> {
  const rootfs = await runtimeFor(host).rootfsPath(name);
  let text: string;
  try {
    text = await readFile(join(rootfs, file), 'utf8');
  } catch {
    return undefined;
  }
  const value = Number(text.trim());
  if (!Number.isInteger(value)) throw new TestbedError(`${name} on ${host.hostId}: ${file} holds "${text.trim()}"`);
  return value;
}

/** The counter the container last reported. */
export async function readCounter(host: LxcHost, name: string): Promise<number> {
  const value = await readReport(host, name, COUNTER_FILE);
  if (value === undefined) throw new TestbedError(`${name} on ${host.hostId} has not reported a counter yet`);
  return value;
}

async function poll<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new TestbedError(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((wake) => setTimeout(wake, 50));
  }
}

/** Waits until the counter exceeds `above`; returns the value seen. */
export function waitForCounterAbove(host: LxcHost, name: string, above: number, timeoutMs = 10_000): Promise<number> {
  return poll(`${name} on ${host.hostId} to count past ${above}`, timeoutMs, async () => {
    const value = await readReport(host, name, COUNTER_FILE);
    return value !== undefined && value > above ? value : undefined;
  });
}

/**
 * Waits until the container is RUNNING and its workload has reported: a counter, and if it holds memory, the
 * memory filled. Returns the counter.
 */
export async function waitRunning(host: LxcHost, name: string, timeoutMs = 30_000): Promise<number> {
  const runtime = runtimeFor(host);
  const rootfs = await runtime.rootfsPath(name);
  const holdsMemory = await stat(join(rootfs, MEMORY_PROGRAM)).then(
    () => true,
    () => false,
  );
  return poll(`${name} on ${host.hostId} to run its workload`, timeoutMs, async () => {
    if ((await runtime.state(name)) !== 'RUNNING') return undefined;
    if (holdsMemory && (await readReport(host, name, MEMORY_GENERATION_FILE)) === undefined) return undefined;
    return readReport(host, name, COUNTER_FILE);
  });
}

/**
 * Crashes a running container: SIGKILL to its init (the kernel then kills the rest of its PID namespace). Resolves
 * once LXC says STOPPED and all of its processes have left the process table, so that a restore on this machine
 * cannot trip over them.
 */
export async function crashContainer(host: LxcHost, name: string, timeoutMs = 30_000): Promise<void> {
  const runtime = runtimeFor(host);
  const { stdout } = await run('lxc-info', ['-P', host.lxcpath, '-n', validateContainerName(name), '-p', '-H']);
  const tree = await processTree(Number(stdout.trim()));
  if (tree.length === 0) throw new TestbedError(`${name} on ${host.hostId} has no init process to kill`);
  process.kill(tree[0]!.pid, 'SIGKILL');
  await poll(`${name} on ${host.hostId} to stop and its processes to be gone`, timeoutMs, async () => {
    if ((await runtime.state(name)) !== 'STOPPED') return undefined;
    const present = await Promise.all(tree.map(async (p) => (await readProcStat(p.pid))?.startTime === p.startTime));
    return present.includes(true) ? undefined : true;
  });
}

/** Makes the memory holder rewrite its first `mib` MiB with new content; resolves once it has. */
export async function dirtyMemory(host: LxcHost, name: string, mib: number, timeoutMs = 60_000): Promise<void> {
  const rootfs = await runtimeFor(host).rootfsPath(name);
  const applied = await readReport(host, name, MEMORY_GENERATION_FILE);
  if (applied === undefined) throw new TestbedError(`${name} on ${host.hostId} holds no memory (or has not filled it)`);
  const generation = applied + 1;
  await writeAtomically(join(rootfs, MEMORY_REQUEST_FILE), `${generation} ${mib}\n`);
  await poll(`${name} on ${host.hostId} to rewrite ${mib} MiB`, timeoutMs, async () =>
    (await readReport(host, name, MEMORY_GENERATION_FILE)) === generation ? true : undefined,
  );
}

/**
 * Copies a (stopped) container's config and rootfs to another host's lxcpath and rewrites the paths in its
 * config, as a host restoring a snapshot lays it out.
 */
export async function copyContainer(from: LxcHost, to: LxcHost, name: string): Promise<void> {
  const source = runtimeFor(from);
  const target = runtimeFor(to);
  const sourceDir = dirname(source.configPath(name));
  const targetDir = dirname(target.configPath(name));
  const sourceRootfs = await source.rootfsPath(name);
  if (dirname(sourceRootfs) !== sourceDir) {
    throw new TestbedError(`${name}'s rootfs ${sourceRootfs} is outside its directory ${sourceDir}`);
  }
  await mkdir(targetDir, { recursive: true });
  // cp -a keeps device nodes, ownership and symlinks exactly as they are.
  await run('cp', ['-a', sourceRootfs, join(targetDir, 'rootfs')], { timeoutMs: 300_000 });
  const config = await readFile(source.configPath(name), 'utf8');
  await writeFile(target.configPath(name), relocateLxcConfig(config, sourceDir, targetDir));
}

/**
 * Kills (lxc-stop -k) and destroys every container of a runtime, going on past failures; stops early at the
 * deadline. Returns the names removed and what failed.
 */
async function removeAllContainers(
  runtime: LxcRuntime,
  deadline = Number.POSITIVE_INFINITY,
): Promise<{ removed: string[]; failures: string[] }> {
  const removed: string[] = [];
  const failures: string[] = [];
  for (const name of await runtime.list()) {
    if (Date.now() > deadline) {
      failures.push(`${name}: not removed, out of time`);
      continue;
    }
    try {
      await runtime.stop(name, { kill: true });
      await runtime.destroy(name);
      removed.push(name);
    } catch (err) {
      failures.push(`${name}: ${errorMessage(err)}`);
    }
  }
  return { removed, failures };
}

/** Kills and destroys every container of a host, then removes its lxcpath. Throws if anything survived. */
export async function destroyHost(host: LxcHost): Promise<void> {
  const { failures } = await removeAllContainers(runtimeFor(host));
  if (failures.length > 0) {
    throw new TestbedError(`could not remove containers of ${host.hostId} (${host.lxcpath}):\n${failures.join('\n')}`);
  }
  await rm(host.lxcpath, { recursive: true, force: true });
}

/** A running container's monitor process, as `ps` shows it: `[lxc monitor] <lxcpath> <name>`. */
export interface LxcMonitor {
  pid: number;
  lxcpath: string;
  name: string;
}

/** Containers running (monitor processes alive) with an lxcpath under `rootDir`. Read from /proc, no LXC call. */
export async function runningLxcMonitors(rootDir: string): Promise<LxcMonitor[]> {
  const root = resolve(rootDir);
  const monitors: LxcMonitor[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    const match = /^\[lxc monitor\] (\S+) (\S+)/.exec(cmdline.replaceAll('\0', ' '));
    if (match?.[1] && match[2] && (match[1] === root || match[1].startsWith(`${root}/`))) {
      monitors.push({ pid: Number(entry), lxcpath: match[1], name: match[2] });
    }
  }
  return monitors;
}

/** lxcpaths below `rootDir`: directories with a child `<name>/config`. Searched a few levels deep only. */
async function findLxcpaths(rootDir: string, depth = 5): Promise<string[]> {
  const children = await readdir(rootDir, { withFileTypes: true }).catch(() => []);
  const dirs = children.filter((child) => child.isDirectory()).map((child) => join(rootDir, child.name));
  const isContainer = await Promise.all(dirs.map((dir) => stat(join(dir, 'config')).then(() => true, () => false)));
  if (isContainer.some(Boolean)) return [rootDir];
  if (depth === 0) return [];
  return (await Promise.all(dirs.map((dir) => findLxcpaths(dir, depth - 1)))).flat();
}

/**
 * Removes the leftovers of earlier runs that crashed: every container under any lxcpath below `rootDir` is
 * killed (lxc-stop -k) and destroyed. Bounded by `timeoutMs`; returns the `lxcpath/name`s removed.
 */
export async function cleanupLxcHosts(rootDir: string, timeoutMs = 60_000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  const lxcpaths = new Set(await findLxcpaths(resolve(rootDir)));
  for (const monitor of await runningLxcMonitors(rootDir)) lxcpaths.add(monitor.lxcpath);
  const removed: string[] = [];
  const failures: string[] = [];
  for (const lxcpath of lxcpaths) {
    const runtime = new LxcRuntime({ lxcpath, logger: log, commandTimeoutMs: 20_000 });
    const outcome = await removeAllContainers(runtime, deadline);
    removed.push(...outcome.removed.map((name) => join(lxcpath, name)));
    failures.push(...outcome.failures.map((failure) => `${lxcpath}/${failure}`));
  }
  if (removed.length > 0) log.debug('removed containers', { removed });
  if (failures.length > 0) throw new TestbedError(`cleanup of ${rootDir} left containers:\n${failures.join('\n')}`);
  return removed;
}
