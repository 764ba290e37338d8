import { setTimeout as sleep } from 'node:timers/promises';
import type { ServerStream } from '../api/cluster-client.ts';
import type { TransferProgress__Output } from '../api/generated/lxcr/v1/TransferProgress.ts';

/**
 * The progress bar of `lxcr checkpoint|restore|migrate`: while their call runs (the transfer itself runs on an
 * agent), the agent is asked for the container's transfer (WatchTransfer) and each update redraws one line on
 * stderr. A migration uploads and then restores: each transfer gets its own line.
 */

const MIB = 1024 * 1024;
const BAR_WIDTH = 20;
/** How long to wait before asking again when no transfer runs yet (a checkpoint dumps first) or one ended. */
const ASK_AGAIN_MS = 500;

/** "42s", "3m07s", "1h02m". */
export function formatEta(seconds: number): string {
  const s = Math.ceil(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/**
 * One line for a transfer, e.g.
 * `restore api-a v3 on host2 [#######-------------]  35%  44.8/128.0 MiB  22.4 MiB/s  ETA 4s`, or without a known
 * total (uploads): `upload api-a v3 on host1  44.8 MiB  22.4 MiB/s`.
 */
export function renderProgressLine(p: Pick<TransferProgress__Output, 'kind' | 'container' | 'host' | 'version' | 'bytesDone' | 'bytesTotal' | 'elapsedMs' | 'done'>): string {
  const head = `${p.kind} ${p.container}${p.version ? ` v${p.version}` : ''} on ${p.host}`;
  const bytesPerSecond = p.elapsedMs > 0 ? p.bytesDone / (p.elapsedMs / 1000) : 0;
  const rate = `${(bytesPerSecond / MIB).toFixed(1)} MiB/s`;
  const done = (p.bytesDone / MIB).toFixed(1);
  if (p.bytesTotal <= 0) return `${head}  ${done} MiB  ${rate}${p.done ? '  done' : ''}`;
  const fraction = Math.min(1, p.bytesDone / p.bytesTotal);
  const filled = Math.floor(fraction * BAR_WIDTH);
  const bar = `[${'#'.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}]`;
  const percent = `${String(Math.floor(fraction * 100)).padStart(3)}%`;
  // Under 1% done the rate is mostly the transfer's start-up (a lease, the manifest, the first reads): no ETA yet.
  const eta = p.done ? 'done' : bytesPerSecond > 0 && fraction >= 0.01 ? `ETA ${formatEta((p.bytesTotal - p.bytesDone) / bytesPerSecond)}` : 'ETA ?';
  return `${head} ${bar} ${percent}  ${done}/${(p.bytesTotal / MIB).toFixed(1)} MiB  ${rate}  ${eta}`;
}

/**
 * A line redrawn in place with '\r' (padded over the previous text, so no terminal escape is needed and a log of
 * a non-terminal stderr stays readable), and closed with a newline when its transfer is done.
 */
export class ProgressLine {
  private shownLength = 0;

  constructor(private readonly out: { write(text: string): unknown }) {}

  show(line: string, done: boolean): void {
    this.out.write(`\r${line}${' '.repeat(Math.max(0, this.shownLength - line.length))}${done ? '\n' : ''}`);
    this.shownLength = done ? 0 : line.length;
  }

  /** Ends a line left open (its transfer's last update was not seen). */
  close(): void {
    if (this.shownLength > 0) this.out.write('\n');
    this.shownLength = 0;
  }
}

/**
 * `work`'s result, with the progress of `container`'s transfers drawn on `out` while it runs. Watching is best
 * effort: an agent that cannot answer (e.g. one without WatchTransfer) just leaves the bar out.
 */
export async function withTransferProgress<T>(
  watch: (container: string, onProgress: (progress: TransferProgress__Output) => void) => ServerStream,
  container: string,
  out: { write(text: string): unknown },
  work: Promise<T>,
): Promise<T> {
  const line = new ProgressLine(out);
  const settled = new AbortController();
  const finished = work.then(
    () => settled.abort(),
    () => settled.abort(),
  );
  const watching = (async () => {
    while (!settled.signal.aborted) {
      const stream = watch(container, (progress) => line.show(renderProgressLine(progress), progress.done));
      const cancel = () => stream.cancel();
      settled.signal.addEventListener('abort', cancel, { once: true });
      try {
        await stream.done;
      } catch {
        return;
      } finally {
        settled.signal.removeEventListener('abort', cancel);
      }
      await sleep(ASK_AGAIN_MS, undefined, { signal: settled.signal }).catch(() => undefined);
    }
  })();
  try {
    return await work;
  } finally {
    await finished;
    await watching;
    line.close();
  }
}
