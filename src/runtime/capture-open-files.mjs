// CRIU runs this (through the post-dump action script src/runtime/open-files.ts writes) at the end of a dump that
// leaves the container running, while every task of the container is still frozen. It copies each regular file
// a task holds open on the container's root filesystem into the images directory, as it is at this instant.
//
// Why: CRIU restores an open file by reopening its path and checks the size it dumped, but the rootfs is archived
// after the container runs again. A file renamed, deleted or resized in between (a write-then-rename, a growing
// data file) made a committed snapshot unrestorable. Restore puts these copies back first (putBackOpenFiles).
//
// Plain JavaScript on purpose: it runs inside the freeze, and node starts in ~60 ms where a TypeScript loader
// takes several times that. It never fails the dump by its exit code: CRIU (cr_dump_finish) would then let the
// tasks run on even in a stopping dump and hand the code back to lxc-checkpoint. It always exits 0 and writes
// what happened, error included, to the report the runtime reads after lxc-checkpoint returns.
import { constants, copyFileSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

const reportPath = process.env.LXCR_OPEN_FILES_REPORT;
const maxBytes = Number(process.env.LXCR_OPEN_FILES_MAX_BYTES);
const initPid = Number(process.env.CRTOOLS_INIT_PID);
const { O_APPEND, O_WRONLY } = constants;
const O_ACCMODE = 0o3; // Linux's; node's fs.constants lacks it

/**
 * The process `rootPid` and all its descendants: the tasks CRIU dumps (nested PID namespaces included). The same
 * walk as src/util/proc.ts's processTree, synchronous and dependency-free for this hook.
 * @param {number} rootPid
 * @returns {number[]}
 */
function processTree(rootPid) {
  /** @type {Map<number, number[]>} */
  const children = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // a host process that exited meanwhile
    }
    // The command name (field 2) may hold spaces and parentheses: the parent PID is the 2nd field after the last ')'.
    const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    children.set(parent, [...(children.get(parent) ?? []), Number(entry)]);
  }
  const tree = [rootPid];
  for (const pid of tree) tree.push(...(children.get(pid) ?? []));
  return tree;
}

/**
 * The mount ID of the container's root filesystem, as init sees it (the last "/" mount is the visible one).
 * @param {number} pid
 */
function rootMountId(pid) {
  const roots = readFileSync(`/proc/${pid}/mountinfo`, 'utf8')
    .split('\n')
    .map((line) => line.split(' '))
    .filter((fields) => fields[4] === '/');
  const id = roots.at(-1)?.[0];
  if (id === undefined) throw new Error(`no root mount in /proc/${pid}/mountinfo`);
  return id;
}

/**
 * @param {number} pid
 * @param {string} fd
 */
function fdInfo(pid, fd) {
  const text = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
  const flags = Number.parseInt(/^flags:\s*([0-7]+)$/m.exec(text)?.[1] ?? '0', 8);
  return {
    mountId: /^mnt_id:\s*(\d+)$/m.exec(text)?.[1],
    // Write-only and appending, as a log is opened: CRIU does not check such a file's size on restore.
    appendOnly: (flags & O_ACCMODE) === O_WRONLY && (flags & O_APPEND) !== 0,
  };
}

/** @param {string} reportPath */
function capture(reportPath) {
  const outputDir = dirname(reportPath);
  const rootMount = rootMountId(initPid);
  /** @type {{ path: string, file: string, size: number, mode: number, uid: number, gid: number, appendOnly: boolean }[]} */
  const captured = [];
  /** @type {{ path: string, size: number }[]} */
  const skipped = [];
  /** Each file once, however many descriptors hold it; the entry when it was copied. @type {Map<string, typeof captured[number] | undefined>} */
  const seen = new Map();
  let bytes = 0;
  for (const pid of processTree(initPid)) {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      const link = `/proc/${pid}/fd/${fd}`;
      try {
        const stat = statSync(link);
        // Unlinked files (nlink 0) are CRIU's: it saves their content as ghost files in the images itself.
        if (!stat.isFile() || stat.nlink === 0) continue;
        const { mountId, appendOnly } = fdInfo(pid, fd);
        if (mountId !== rootMount) continue;
        const path = readlinkSync(link);
        const identity = `${stat.dev}:${stat.ino}:${path}`;
        if (!path.startsWith('/')) continue;
        if (seen.has(identity)) {
          const entry = seen.get(identity);
          if (entry && !appendOnly) entry.appendOnly = false; // append-only only if every holder only appends
          continue;
        }
        if (bytes + stat.size > maxBytes) {
          seen.set(identity, undefined);
          skipped.push({ path, size: stat.size });
          continue;
        }
        const file = `lxcr-open-file-${String(captured.length)}`;
        // Opening the /proc link reopens the very inode the task holds, whatever its path is now.
        copyFileSync(link, join(outputDir, file));
        const size = statSync(join(outputDir, file)).size;
        bytes += size;
        const entry = { path, file, size, mode: stat.mode & 0o7777, uid: stat.uid, gid: stat.gid, appendOnly };
        seen.set(identity, entry);
        captured.push(entry);
      } catch (err) {
        throw new Error(`file descriptor ${fd} of task ${pid}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }
  return { captured, skipped, bytes };
}

let report;
try {
  if (!reportPath || !Number.isInteger(initPid) || initPid <= 0 || !(maxBytes >= 0)) {
    throw new Error('LXCR_OPEN_FILES_REPORT, LXCR_OPEN_FILES_MAX_BYTES and CRTOOLS_INIT_PID must be set');
  }
  report = capture(reportPath);
} catch (err) {
  report = { error: err instanceof Error ? err.message : String(err) };
}
if (reportPath) {
  try {
    writeFileSync(reportPath, JSON.stringify(report));
  } catch (err) {
    // No report at all: the runtime fails the checkpoint for want of one.
    process.stderr.write(`capture-open-files: cannot write ${reportPath}: ${err instanceof Error ? err.message : String(err)}\n`);
  }
}
