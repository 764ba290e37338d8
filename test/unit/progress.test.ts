import { describe, expect, it } from 'vitest';
import type { ServerStream } from '../../src/api/cluster-client.ts';
import type { TransferProgress__Output } from '../../src/api/generated/lxcr/v1/TransferProgress.ts';
import { TransferTracker } from '../../src/checkpoint/transfers.ts';
import { ExitCode } from '../../src/cli/command.ts';
import { main } from '../../src/cli/main.ts';
import { ProgressLine, formatEta, renderProgressLine, withTransferProgress } from '../../src/cli/progress.ts';

const MIB = 1024 * 1024;
const base = { container: 'api-a', host: 'host2', version: 3, done: false };

describe('the progress line of lxcr checkpoint|restore|migrate', () => {
  it('draws a bar, percent, MiB, MiB/s and ETA when the total is known', () => {
    expect(renderProgressLine({ ...base, kind: 'restore', bytesDone: 32 * MIB, bytesTotal: 128 * MIB, elapsedMs: 2000 })).toBe(
      'restore api-a v3 on host2 [#####---------------]  25%  32.0/128.0 MiB  16.0 MiB/s  ETA 6s',
    );
    expect(renderProgressLine({ ...base, kind: 'restore', bytesDone: 128 * MIB, bytesTotal: 128 * MIB, elapsedMs: 4000, done: true })).toBe(
      'restore api-a v3 on host2 [####################] 100%  128.0/128.0 MiB  32.0 MiB/s  done',
    );
    expect(renderProgressLine({ ...base, kind: 'restore', bytesDone: 0, bytesTotal: 10 * MIB, elapsedMs: 0 })).toBe(
      'restore api-a v3 on host2 [--------------------]   0%  0.0/10.0 MiB  0.0 MiB/s  ETA ?',
    );
    // Under 1% done: no ETA from the start-up's rate.
    expect(renderProgressLine({ ...base, kind: 'restore', bytesDone: 0.5 * MIB, bytesTotal: 100 * MIB, elapsedMs: 1000 })).toBe(
      'restore api-a v3 on host2 [--------------------]   0%  0.5/100.0 MiB  0.5 MiB/s  ETA ?',
    );
  });

  it('draws bytes and MiB/s without a bar when the total is not known (uploads), and no version before it has one', () => {
    expect(renderProgressLine({ ...base, kind: 'upload', version: 0, bytesDone: 44.8 * MIB, bytesTotal: 0, elapsedMs: 2000 })).toBe('upload api-a on host2  44.8 MiB  22.4 MiB/s');
    expect(renderProgressLine({ ...base, kind: 'upload', bytesDone: 100 * MIB, bytesTotal: 0, elapsedMs: 4000, done: true })).toBe('upload api-a v3 on host2  100.0 MiB  25.0 MiB/s  done');
  });

  it('writes ETAs in seconds, minutes or hours', () => {
    expect([formatEta(0.2), formatEta(59), formatEta(187), formatEta(3720)]).toEqual(['1s', '59s', '3m07s', '1h02m']);
  });

  it('redraws one line in place, padding over longer text, and ends it with a newline when done or closed', () => {
    let text = '';
    const line = new ProgressLine({ write: (t: string) => (text += t) });
    line.show('abcdef', false);
    line.show('abc', false);
    line.show('xyz done', true);
    line.show('next', false);
    line.close();
    line.close();
    expect(text).toBe('\rabcdef\rabc   \rxyz done\n\rnext\n');
  });

  it('asks again while the call runs (a transfer starts after the dump) and stops asking once it settles', async () => {
    const asked: number[] = [];
    const progress = (bytesDone: number, done: boolean): TransferProgress__Output => ({ ...base, kind: 'upload', bytesDone, bytesTotal: 0, elapsedMs: 1000, done });
    const watch = (_container: string, onProgress: (p: TransferProgress__Output) => void): ServerStream => {
      asked.push(Date.now());
      // The first ask finds nothing running; the second sees a transfer to its end.
      if (asked.length === 2) {
        onProgress(progress(MIB, false));
        onProgress(progress(2 * MIB, true));
      }
      return { done: Promise.resolve(), cancel: () => undefined };
    };
    let text = '';
    const result = await withTransferProgress(watch, 'api-a', { write: (t: string) => (text += t) }, new Promise((resolve) => setTimeout(() => resolve('ok'), 1200)));
    expect(result).toBe('ok');
    expect(asked.length).toBeGreaterThanOrEqual(2);
    expect(text).toBe('\rupload api-a v3 on host2  1.0 MiB  1.0 MiB/s\rupload api-a v3 on host2  2.0 MiB  2.0 MiB/s  done\n');
    const count = asked.length;
    await new Promise((resolve) => setTimeout(resolve, 700));
    expect(asked.length).toBe(count);
  });

  it('returns the call\'s failure unchanged, and gives up watching quietly when the agent cannot answer', async () => {
    const watch = (): ServerStream => ({ done: Promise.reject(new Error('UNIMPLEMENTED')), cancel: () => undefined });
    const failure = new Error('checkpoint failed');
    await expect(withTransferProgress(watch, 'api-a', { write: () => undefined }, Promise.reject(failure))).rejects.toBe(failure);
  });

  it('refuses --progress with --no-progress before asking any agent', async () => {
    expect(await main(['checkpoint', 'api-a', '--progress', '--no-progress', '--insecure', '--agent', '127.0.0.1:1'])).toBe(ExitCode.USAGE);
  });
});

describe('the agent\'s transfer tracker', () => {
  it('holds the running transfer of each container with its progress, and forgets it once it ends', async () => {
    const tracker = new TransferTracker();
    let seen: ReturnType<TransferTracker['current']>;
    const result = await tracker.track('api-a', 'upload', undefined, (onProgress) => {
      onProgress({ version: 4, bytesDone: 10 });
      seen = tracker.current('api-a');
      expect(seen?.state).toMatchObject({ container: 'api-a', kind: 'upload', version: 4, bytesDone: 10 });
      expect(seen?.state.endedAt).toBeUndefined();
      expect(seen?.state.completedAt).toBeUndefined(); // no known total
      onProgress({ version: 4, bytesDone: 20, bytesTotal: 20 });
      expect(seen?.state.completedAt).toBeGreaterThanOrEqual(seen!.state.startedAt);
      return Promise.resolve('uploaded');
    });
    expect(result).toBe('uploaded');
    expect(tracker.current('api-a')).toBeUndefined();
    await seen!.ended;
    expect(seen!.state.endedAt).toBeGreaterThanOrEqual(seen!.state.startedAt);
    await expect(tracker.track('api-a', 'restore', 2, () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(tracker.current('api-a')).toBeUndefined();
  });
});
