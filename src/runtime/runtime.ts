/**
 * The container runtime the core depends on. The core never shells out: it asks a runtime to list, start,
 * stop, checkpoint and restore containers, and a driver (src/runtime/lxc.ts) does it with the real tools.
 */

/** The lifecycle states LXC reports (`lxc-info -s`). Any other state is an error, never guessed. */
export const CONTAINER_STATES = [
  'STOPPED',
  'STARTING',
  'RUNNING',
  'STOPPING',
  'ABORTING',
  'FREEZING',
  'FROZEN',
  'THAWED',
] as const;

export type ContainerState = (typeof CONTAINER_STATES)[number];

export function isContainerState(value: string): value is ContainerState {
  return (CONTAINER_STATES as readonly string[]).includes(value);
}

export interface StopOptions {
  /** Kill the container's processes at once instead of asking its init to shut down. Default false. */
  kill?: boolean;
  /** For a clean stop: how long init gets before it is killed anyway. Default 30 s. */
  timeoutMs?: number;
}

export interface CheckpointOptions {
  /**
   * true: the container is stopped once its state is dumped (migration, or a snapshot taken before moving it).
   * false: it keeps running after a short freeze (a periodic snapshot).
   */
  stop: boolean;
  /**
   * For a dump that leaves the container running: also copy, while it is still frozen, the files its processes
   * hold open, so that changes to them before the rootfs is archived cannot make the snapshot unrestorable.
   * Default true; false only to measure a plain lxc-checkpoint dump. A stopping dump needs no copy.
   */
  captureOpenFiles?: boolean;
}

export interface CheckpointResult {
  /** Absolute path of the directory holding the CRIU images (and CRIU's dump.log). */
  imagesDir: string;
  /** Wall time of the dump itself: from freezing the container to all images written, in ms. */
  dumpMs: number;
  /** Total size of the files of the dump (CRIU's images and the captured open files), logs excluded, in bytes. */
  imageBytes: number;
  /** The open files copied during the freeze (see {@link CheckpointOptions.captureOpenFiles}); 0 when none were. */
  capturedOpenFiles: number;
}

export interface RestoreResult {
  /** Wall time from starting the restore to the container running again, in ms. */
  restoreMs: number;
  /**
   * Time waited before the restore for the processes of the dumped container to leave this machine's process
   * table (only when the images were dumped on this machine and those processes still lingered), in ms.
   */
  waitedForOldProcessesMs: number;
}

/**
 * One host's containers. Names are validated by the runtime (an invalid one throws InvalidArgumentError);
 * a container that does not exist throws NotFoundError; an operation the container's state does not allow
 * throws FailedPreconditionError, checked before anything is changed.
 */
export interface ContainerRuntime {
  /** Names of all containers defined on this host, sorted. */
  list(): Promise<string[]>;
  /** Whether a container of this name is defined on this host. */
  exists(name: string): Promise<boolean>;
  /** The container's current state. */
  state(name: string): Promise<ContainerState>;
  /**
   * Every container defined on this host with its state, sorted by name, read at once: a supervisor polling a
   * host of many containers must not pay one process per container per poll.
   */
  states(): Promise<Map<string, ContainerState>>;
  /** Starts a stopped container; resolves once it is RUNNING. */
  start(name: string): Promise<void>;
  /** Stops a container; resolves at once if it is already stopped. */
  stop(name: string, options?: StopOptions): Promise<void>;
  /** Deletes a stopped container: its config and rootfs. */
  destroy(name: string): Promise<void>;
  /**
   * Dumps a RUNNING container's processes into `imagesDir` (created if missing; must be empty) with CRIU.
   * Throws CheckpointError carrying CRIU's own error lines when the dump fails; the container then keeps
   * running.
   */
  checkpoint(name: string, imagesDir: string, options: CheckpointOptions): Promise<CheckpointResult>;
  /**
   * Restores a STOPPED container from the images of {@link checkpoint}, possibly taken on another host (the
   * container's config and rootfs must be in place first). Throws RestoreError carrying CRIU's error lines.
   */
  restore(name: string, imagesDir: string): Promise<RestoreResult>;
  /**
   * What a snapshot needs besides the CRIU images: the container's config, with its own directory written as
   * {@link CONTAINER_DIR_PLACEHOLDER} so another host can lay it out elsewhere, and its rootfs as a tar stream
   * (started when `openRootfsTar` is called; its iteration fails if tar fails).
   */
  exportFiles(name: string): Promise<ExportedContainer>;
  /**
   * Lays out a container that does not exist on this host yet from exported files, ready for {@link restore}: its
   * rootfs unpacked from the tar, or a directory {@link unpackRootfs} filled earlier, moved into place.
   */
  importFiles(name: string, files: ImportedFiles): Promise<void>;
  /** Unpacks an exported rootfs tar into an existing empty directory, numeric owners and modes kept. */
  unpackRootfs(tarPath: string, targetDir: string): Promise<void>;
  /** The container's configuration file, part of every snapshot. */
  configPath(name: string): string;
  /** The container's root filesystem directory, as its configuration names it; part of every snapshot. */
  rootfsPath(name: string): Promise<string>;
}

/** Stands for the container's own directory in an exported config. */
export const CONTAINER_DIR_PLACEHOLDER = '@LXCR_CONTAINER_DIR@';

/** The files {@link ContainerRuntime.importFiles} lays out: the exported config and the rootfs, as a tar or unpacked. */
export type ImportedFiles = { config: Buffer } & ({ rootfsTarPath: string } | { rootfsDir: string });

export interface ExportedContainer {
  config: Buffer;
  openRootfsTar(): AsyncIterable<Uint8Array>;
}
