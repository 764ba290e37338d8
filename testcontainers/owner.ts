import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readProcStatSync } from '../src/util/proc.ts';

/**
 * Who owns a testbed run directory: the PID and kernel start time of the process that created it. A run
 * whose owner is gone (or whose PID now belongs to a different process) is a crashed run's leftover.
 */
export interface RunOwner {
  pid: number;
  startTime: string;
}

const OWNER_FILE = 'owner.json';

export function claimRunDir(runDir: string): void {
  mkdirSync(runDir, { recursive: true });
  const owner: RunOwner = { pid: process.pid, startTime: readProcStatSync(process.pid)?.startTime ?? '' };
  writeFileSync(join(runDir, OWNER_FILE), JSON.stringify(owner));
}

export function readOwner(runDir: string): RunOwner | undefined {
  try {
    return JSON.parse(readFileSync(join(runDir, OWNER_FILE), 'utf8')) as RunOwner;
  } catch {
    return undefined;
  }
}

export function ownerAlive(owner: RunOwner | undefined): boolean {
  return owner !== undefined && readProcStatSync(owner.pid)?.startTime === owner.startTime;
}

export function listRunDirs(rootDir: string): string[] {
  try {
    return readdirSync(rootDir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => join(rootDir, e.name));
  } catch {
    return [];
  }
}

export function removeRunDir(runDir: string): void {
  rmSync(runDir, { recursive: true, force: true });
}
