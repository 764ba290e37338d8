/**
 * Files the container's tasks hold open at a dump, saved with the dump and put back before a restore.
 *
 * A snapshot's rootfs is archived after the dump, with the container running again (it is frozen only for the
 * dump). CRIU restores an open file by reopening its path and checking the size it dumped, so a file renamed,
 * deleted or resized between the dump and the archive (a write-then-rename, a growing data file) made a committed
 * snapshot unrestorable: "Can't open file ... on restore", seen in CI. CRIU's post-dump action script runs while
 * the tasks are still frozen; there capture-open-files.mjs copies every open regular file of the container's root
 * filesystem into the images directory, and {@link putBackOpenFiles} writes them back into the rootfs before
 * `lxc-checkpoint -r`. A stopping dump needs none of it: nothing runs to change the rootfs before it is archived.
 */
import { randomBytes } from 'node:crypto';
import { chmod, chown, copyFile, lstat, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CheckpointError, RestoreError, errorMessage } from '../util/errors.ts';

/** The capture's report, beside the CRIU images (and so part of the snapshot). */
export const OPEN_FILES_REPORT = 'lxcr-open-files.json';
const CAPTURED_FILE = /^lxcr-open-file-\d+$/;
const CAPTURE_PROGRAM = fileURLToPath(new URL('./capture-open-files.mjs', import.meta.url));

/** Default cap on the bytes copied during the freeze: ~50 ms of copying from the page cache here. */
export const DEFAULT_OPEN_FILES_MAX_BYTES = 64 * 1024 * 1024;

export interface CapturedFile {
  /** The file's path inside the container, as the kernel named it at the dump. */
  path: string;
  /** The copy's name in the images directory. */
  file: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  /**
   * Every descriptor on it was write-only and appending (a log). CRIU does not check the size of such a file, so
   * restore writes the copy only where the file is gone, and keeps what was appended after the dump (the lines
   * logged before a crash, say).
   */
  appendOnly: boolean;
}

export interface OpenFilesReport {
  captured: CapturedFile[];
  /** Open files left out because they would have taken the copy past its cap; restore relies on the archive for them. */
  skipped: { path: string; size: number }[];
  bytes: number;
}

function shellQuote(text: string): string {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

/**
 * The action script CRIU runs at every step of a dump and restore (CRIU config `action-script`). A shell script
 * so that the steps it ignores cost a fork, not a node start; only post-dump runs the capture.
 */
export function postDumpActionScript(nodePath: string = process.execPath): string {
  return (
    '#!/bin/sh\n# Written by LXCloud-CR: at post-dump the container is still frozen; see src/runtime/open-files.ts.\n' +
    '[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] || exit 0\n' +
    `exec ${shellQuote(nodePath)} ${shellQuote(CAPTURE_PROGRAM)}\n`
  );
}

/** What lxc-checkpoint passes on to CRIU and CRIU to the action script, for a dump into `imagesDir`. */
export function captureEnvironment(imagesDir: string, maxBytes: number): NodeJS.ProcessEnv {
  return { LXCR_OPEN_FILES_REPORT: join(imagesDir, OPEN_FILES_REPORT), LXCR_OPEN_FILES_MAX_BYTES: String(maxBytes) };
}

function isCapturedFile(entry: unknown): entry is CapturedFile {
  const e = entry as Partial<CapturedFile> | null;
  const whole = (n: unknown) => Number.isInteger(n) && (n as number) >= 0;
  return (
    typeof e?.path === 'string' &&
    typeof e.file === 'string' &&
    CAPTURED_FILE.test(e.file) &&
    [e.size, e.mode, e.uid, e.gid].every(whole) &&
    typeof e.appendOnly === 'boolean'
  );
}

async function readReport(imagesDir: string): Promise<unknown> {
  return JSON.parse(await readFile(join(imagesDir, OPEN_FILES_REPORT), 'utf8')) as unknown;
}

function validReport(report: unknown): report is OpenFilesReport {
  const r = report as Partial<OpenFilesReport> | null;
  return Array.isArray(r?.captured) && r.captured.every(isCapturedFile) && Array.isArray(r.skipped) && Number.isInteger(r.bytes);
}

/**
 * The capture's report after a dump that asked for it. Throws a CheckpointError when the capture did not run or
 * failed: such a dump may not restore, and is not worth storing.
 */
export async function readCaptureReport(container: string, imagesDir: string): Promise<OpenFilesReport> {
  let report: unknown;
  try {
    report = await readReport(imagesDir);
  } catch (err) {
    throw new CheckpointError(
      `checkpoint of ${container}: the files open at the dump were not captured (no readable ${OPEN_FILES_REPORT}: ${errorMessage(err)}); ` +
        `CRIU's post-dump action script did not run or could not write into ${imagesDir}`,
      { cause: err },
    );
  }
  const failure = (report as { error?: unknown } | null)?.error;
  if (typeof failure === 'string') {
    throw new CheckpointError(`checkpoint of ${container}: capturing the files open at the dump failed: ${failure}`);
  }
  if (!validReport(report)) throw new CheckpointError(`checkpoint of ${container}: ${OPEN_FILES_REPORT} is malformed`);
  return report;
}

/**
 * The components of a captured path, refused unless it is a plain absolute path: the report travels with the
 * snapshot and names files to write as root.
 */
function pathComponents(path: string): string[] {
  const parts = path.split('/').slice(1);
  if (!path.startsWith('/') || parts.some((part) => part === '' || part === '.' || part === '..' || part.includes('\0'))) {
    throw new Error(`"${path}" is not a plain absolute path`);
  }
  return parts;
}

/**
 * The directory `parts` names under `rootfs`, created where missing. A symbolic link on the way is refused, not
 * followed: the kernel named the path without links at the dump, and one pointing out of the rootfs would make us
 * write, as root, to the host.
 */
async function directoryInRootfs(rootfs: string, parts: string[]): Promise<string> {
  let dir = rootfs;
  for (const part of parts) {
    dir = join(dir, part);
    const stat = await lstat(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (stat === undefined) await mkdir(dir, { mode: 0o755 });
    else if (!stat.isDirectory()) throw new Error(`${dir} is ${stat.isSymbolicLink() ? 'a symbolic link' : 'not a directory'} now`);
  }
  return dir;
}

async function isRegularFile(path: string): Promise<boolean> {
  return (await lstat(path).catch(() => undefined))?.isFile() ?? false;
}

/**
 * Writes the files captured at the dump back into the container's rootfs, each as it was then (content, mode,
 * owner), replacing what the archive holds at their paths; an append-only file only where it is gone. Images
 * without a report (a stopping dump, a raw one) need nothing. Returns how many files were written. The container
 * must be stopped.
 */
export async function putBackOpenFiles(container: string, imagesDir: string, rootfs: string): Promise<number> {
  let report: unknown;
  try {
    report = await readReport(imagesDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw new RestoreError(`restore of ${container}: ${join(imagesDir, OPEN_FILES_REPORT)} is unreadable: ${errorMessage(err)}`);
  }
  if (!validReport(report)) throw new RestoreError(`restore of ${container}: ${join(imagesDir, OPEN_FILES_REPORT)} is malformed`);
  let written = 0;
  for (const entry of report.captured) {
    try {
      const parts = pathComponents(entry.path);
      const dir = await directoryInRootfs(rootfs, parts.slice(0, -1));
      const target = join(dir, parts.at(-1)!);
      if (entry.appendOnly && (await isRegularFile(target))) continue;
      const temporary = join(dir, `.lxcr-put-back-${randomBytes(6).toString('hex')}`);
      try {
        await copyFile(join(imagesDir, entry.file), temporary);
        await chown(temporary, entry.uid, entry.gid);
        await chmod(temporary, entry.mode);
        await rename(temporary, target); // over a regular file or a symbolic link; a directory there fails
        written++;
      } finally {
        await rm(temporary, { force: true });
      }
    } catch (err) {
      throw new RestoreError(
        `restore of ${container}: cannot put back ${entry.path}, open in the container at the dump: ${errorMessage(err)}`,
        { cause: err },
      );
    }
  }
  return written;
}
