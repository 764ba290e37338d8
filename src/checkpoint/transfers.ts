/**
 * The snapshot transfers running on this host, per container, for the public API's WatchTransfer (and so for
 * `lxcr`'s progress bars): the replicator's uploads and the restore service's downloads report their bytes here.
 * Only what runs now is kept: a finished transfer is dropped at once (a watcher holding it still reads its last state).
 */

import type { TransferProgressListener } from '../storage/snapshots.ts';

export type TransferKind = 'upload' | 'restore';

export interface TransferState {
  container: string;
  kind: TransferKind;
  /** The snapshot version; undefined until an upload has begun its version. */
  version?: number;
  bytesDone: number;
  /** Undefined when not known in advance. */
  bytesTotal?: number;
  /** performance.now() when it started. */
  startedAt: number;
  /** performance.now() when all of a known total was done (a restore then still restores the container). */
  completedAt?: number;
  /** Set once it ended, successfully or not. */
  endedAt?: number;
}

/** One running transfer: its state, and a promise settled when it ends. */
export interface Transfer {
  readonly state: Readonly<TransferState>;
  readonly ended: Promise<void>;
}

export interface TransferHandle {
  /** Records progress (the upload's or download's `onProgress`). */
  progress: TransferProgressListener;
  /** The transfer ended (call it whatever the outcome). */
  end(): void;
}

export class TransferTracker {
  private readonly running = new Map<string, Transfer>();

  /** Starts tracking a transfer of `container`; one at a time per container (a newer one replaces the entry). */
  begin(container: string, kind: TransferKind, version?: number): TransferHandle {
    const state: TransferState = { container, kind, version, bytesDone: 0, startedAt: performance.now() };
    let resolveEnded!: () => void;
    const ended = new Promise<void>((resolve) => (resolveEnded = resolve));
    const transfer: Transfer = { state, ended };
    this.running.set(container, transfer);
    return {
      progress: (update) => {
        if (state.endedAt !== undefined) return;
        state.bytesDone = update.bytesDone;
        state.bytesTotal = update.bytesTotal;
        state.version = update.version;
        if (state.completedAt === undefined && update.bytesTotal !== undefined && update.bytesDone >= update.bytesTotal) state.completedAt = performance.now();
      },
      end: () => {
        if (state.endedAt !== undefined) return;
        state.endedAt = performance.now();
        if (this.running.get(container) === transfer) this.running.delete(container);
        resolveEnded();
      },
    };
  }

  /** The transfer of `container` running now, if any. */
  current(container: string): Transfer | undefined {
    return this.running.get(container);
  }

  /** Runs `work` as a tracked transfer: `work` gets the progress callback, and the transfer ends with it. */
  async track<T>(container: string, kind: TransferKind, version: number | undefined, work: (onProgress: TransferProgressListener) => Promise<T>): Promise<T> {
    const handle = this.begin(container, kind, version);
    try {
      return await work(handle.progress);
    } finally {
      handle.end();
    }
  }
}
