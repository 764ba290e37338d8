import { readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';

/** What this project reads of /proc/PID/stat. */
export interface ProcStat {
  pid: number;
  /** One letter: R running, S sleeping, T stopped, Z zombie, ... */
  state: string;
  parentPid: number;
  /** Clock ticks after boot: tells a process apart from a later one reusing its PID. */
  startTime: string;
}

function parseProcStat(pid: number, text: string): ProcStat | undefined {
  // Fields after the parenthesised command name (which may itself contain spaces and parentheses):
  // state, ppid, ... with starttime the 20th of them (field 22 of proc(5)).
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const [state, parentPid, startTime] = [fields[0], fields[1], fields[19]];
  if (state === undefined || parentPid === undefined || startTime === undefined) return undefined;
  return { pid, state, parentPid: Number(parentPid), startTime };
}

/** The process's stat, or undefined when it is gone. */
export async function readProcStat(pid: number): Promise<ProcStat | undefined> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return text === undefined ? undefined : parseProcStat(pid, text);
}

/** readProcStat for callers that cannot wait (exit handlers). */
export function readProcStatSync(pid: number): ProcStat | undefined {
  try {
    return parseProcStat(pid, readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

/** The process `rootPid` and all its descendants, root first; empty when it is gone. */
export async function processTree(rootPid: number): Promise<ProcStat[]> {
  const pids = (await readdir('/proc')).filter((entry) => /^\d+$/.test(entry)).map(Number);
  const stats = (await Promise.all(pids.map(readProcStat))).filter((s): s is ProcStat => s !== undefined);
  const tree = stats.filter((s) => s.pid === rootPid);
  for (let i = 0; i < tree.length; i++) {
    tree.push(...stats.filter((s) => s.parentPid === tree[i]?.pid));
  }
  return tree;
}
