import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LxcRuntime } from '../../src/runtime/lxc.ts';
import { snapshotSha256, type ChunkRef, type SnapshotFile, type VersionManifest } from '../../src/storage/manifest.ts';
import { StandbyCache } from '../../src/storage/standby-cache.ts';
import { pseudoRandom } from '../support/bytes.ts';

/**
 * Assembled standby copies on local disk (real files, real tar): written from chunks, moved whole into a restore's
 * staging only when their marker is exactly the manifest restored, and updated by moving unchanged files over.
 */

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** A file of the snapshot cut into chunks of `chunkSize`, and the chunks by hash. */
function fileOf(path: string, data: Buffer, chunkSize: number, chunks: Map<string, Buffer>): SnapshotFile {
  const refs: ChunkRef[] = [];
  for (let at = 0; at < data.length; at += chunkSize) {
    const part = data.subarray(at, at + chunkSize);
    chunks.set(sha(part), part);
    refs.push({ hash: sha(part), size: part.length, storedSize: part.length, codec: 'none', bucket: 0 });
  }
  return { path, mode: 0o600, size: data.length, chunks: refs };
}

function manifestOf(version: number, files: SnapshotFile[]): VersionManifest {
  return {
    container: 'c1', version, sourceHost: 'host1', createdAt: 0, committedAt: 0, files, snapshotSha256: snapshotSha256(files),
    compression: { reasons: {}, rawBytes: 0, storedBytes: 0, lastEstimates: null },
    timings: { freezeMs: 0, dumpMs: 0, uploadMs: 0, totalMs: 0 },
  };
}

describe('assembled standby copies', () => {
  let dir: string;
  let cache: StandbyCache;
  let rootfsTar: Buffer;
  const chunks = new Map<string, Buffer>();
  let chunkReads = 0;
  const runtime = () => new LxcRuntime({ lxcpath: join(dir, 'lxc') });
  const deps = () => ({
    chunk: (_file: SnapshotFile, ref: ChunkRef) => {
      chunkReads++;
      return Promise.resolve(chunks.get(ref.hash)!);
    },
    unpackRootfs: (tar: string, target: string) => runtime().unpackRootfs(tar, target),
  });

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'lxcr-assembled-'));
    cache = new StandbyCache(join(dir, 'standby'));
    const rootfs = join(dir, 'rootfs-src');
    mkdirSync(join(rootfs, 'bin'), { recursive: true });
    writeFileSync(join(rootfs, 'bin/counter'), 'echo counting\n', { mode: 0o755 });
    rootfsTar = execFileSync('tar', ['--numeric-owner', '-C', rootfs, '-cf', '-', '.']);
    chunkReads = 0;
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const snapshot = (version: number, pages: Buffer) =>
    manifestOf(version, [fileOf('images/pages-1.img', pages, 4096, chunks), fileOf('config', Buffer.from('lxc.uts.name = c1\n'), 4096, chunks), fileOf('rootfs.tar', rootfsTar, 4096, chunks)]);

  it('is written from chunks with the rootfs unpacked, and moved whole into staging for exactly its version', async () => {
    const pages = pseudoRandom(64 * 1024, 1);
    const v1 = snapshot(1, pages);
    await cache.assembled.assemble('c1', v1, deps());
    expect(await cache.assembled.version('c1')).toBe(1);

    const staging = join(dir, 'staging', 'c1.restore');
    const taken = await cache.assembled.take('c1', v1, staging);
    expect(taken).toMatchObject({ taken: true, bytes: pages.length + v1.files[1]!.size + rootfsTar.length });
    expect(sha(readFileSync(join(staging, 'images/pages-1.img')))).toBe(sha(pages));
    expect(readFileSync(join(staging, 'rootfs/bin/counter'), 'utf8')).toBe('echo counting\n');
    expect(statSync(join(staging, 'rootfs/bin/counter')).mode & 0o777).toBe(0o755);
    expect(existsSync(join(staging, 'rootfs.tar'))).toBe(false);
    // Moved, not copied: the cache holds no assembled copy any more.
    expect(await cache.assembled.version('c1')).toBeUndefined();
  });

  it('is not taken for another version or content, nor when its marker or a file is damaged', async () => {
    const v1 = snapshot(1, pseudoRandom(64 * 1024, 1));
    await cache.assembled.assemble('c1', v1, deps());
    const v2 = snapshot(2, pseudoRandom(64 * 1024, 2));
    expect(await cache.assembled.take('c1', v2, join(dir, 's1'))).toEqual({ taken: false, reason: 'the assembled copy is of version 1, not 2' });
    const sameNumberOtherContent = { ...v2, version: 1 };
    expect(await cache.assembled.take('c1', sameNumberOtherContent, join(dir, 's2'))).toEqual({ taken: false, reason: 'the assembled copy of version 1 has another content (snapshot sha256 differs)' });

    const assembled = join(cache.dir, 'c1', 'assembled');
    truncateSync(join(assembled, 'images/pages-1.img'), 1000);
    expect(await cache.assembled.take('c1', v1, join(dir, 's3'))).toEqual({ taken: false, reason: 'the assembled copy lacks images/pages-1.img or it has the wrong size' });
    // The next assembly repairs the damaged file though the marker names the version.
    expect(await cache.assembled.assemble('c1', v1, deps())).toEqual({ reusedFiles: 2, writtenBytes: v1.files[0]!.size });
    expect((await cache.assembled.take('c1', v1, join(dir, 's3'))).taken).toBe(true);
    // A take asked during an assembly waits for it, and says how long.
    const assembling = cache.assembled.assemble('c1', v1, deps());
    const during = await cache.assembled.take('c1', v1, join(dir, 's5'));
    await assembling;
    expect(during).toMatchObject({ taken: true, waitedMs: expect.any(Number) as number });
    await cache.assembled.assemble('c1', v1, deps());
    await cache.assembled.assemble('c1', v1, deps());
    writeFileSync(join(assembled, 'assembled.json'), '{not json');
    expect(await cache.assembled.take('c1', v1, join(dir, 's4'))).toEqual({ taken: false, reason: 'no assembled copy (or its marker is missing or unreadable)' });
    expect(existsSync(join(dir, 's1')) || existsSync(join(dir, 's4'))).toBe(false);
  });

  it('moves the unchanged files of the previous version over and writes only the changed ones', async () => {
    const pages = pseudoRandom(64 * 1024, 1);
    const v1 = snapshot(1, pages);
    await cache.assembled.assemble('c1', v1, deps());
    const afterFirst = chunkReads;
    pseudoRandom(4096, 9).copy(pages, 8192);
    const v2 = snapshot(2, pages);
    const result = await cache.assembled.assemble('c1', v2, deps());
    // The config and rootfs moved over; the pages image moved over and patched: one chunk written.
    expect(result).toEqual({ reusedFiles: 2, writtenBytes: 4096 });
    expect(chunkReads - afterFirst).toBe(1);
    expect(await cache.assembled.version('c1')).toBe(2);
    expect(sha(readFileSync(join(cache.dir, 'c1', 'assembled/images/pages-1.img')))).toBe(sha(pages));
    expect(await cache.assembled.assemble('c1', v2, deps())).toEqual({ reusedFiles: 0, writtenBytes: 0 });
    // A shorter image with a changed chunk: patched, and cut to its new size.
    const shorter = Buffer.concat([pseudoRandom(4096, 11), pages.subarray(4096, 40 * 1024)]);
    const v3 = snapshot(3, shorter);
    expect(await cache.assembled.assemble('c1', v3, deps())).toEqual({ reusedFiles: 2, writtenBytes: 4096 });
    expect(sha(readFileSync(join(cache.dir, 'c1', 'assembled/images/pages-1.img')))).toBe(sha(shorter));
    // Longer: the chunks past the old end are written.
    const v4 = snapshot(4, pages);
    expect(await cache.assembled.assemble('c1', v4, deps())).toEqual({ reusedFiles: 2, writtenBytes: 4096 + 24 * 1024 });
    expect(sha(readFileSync(join(cache.dir, 'c1', 'assembled/images/pages-1.img')))).toBe(sha(pages));

    // A ready mark keeps the assembled copy and removes what an interrupted assembly left.
    mkdirSync(join(cache.dir, 'c1', 'assembled.x.partial'));
    await cache.markReady('c1', 4, new Set());
    expect(await cache.assembled.version('c1')).toBe(4);
    expect(existsSync(join(cache.dir, 'c1', 'assembled.x.partial'))).toBe(false);
    await cache.drop('c1');
    expect(existsSync(join(cache.dir, 'c1'))).toBe(false);
  });
});
