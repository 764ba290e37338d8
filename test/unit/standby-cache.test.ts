import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StandbyCache } from '../../src/storage/standby-cache.ts';
import { pseudoRandom } from '../support/bytes.ts';

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describe('StandbyCache', () => {
  let dir: string;
  let cache: StandbyCache;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'lxcr-standby-'));
    cache = new StandbyCache(dir);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('returns what was put, and nothing for a chunk or container it never saw', async () => {
    const a = pseudoRandom(1000, 1);
    await cache.put('c1', sha(a), a);
    expect(await cache.get('c1', sha(a))).toEqual(a);
    expect(await cache.get('c2', sha(a))).toBeUndefined();
    expect(await cache.get('c1', sha(pseudoRandom(10, 2)))).toBeUndefined();
    expect(await cache.containers()).toEqual(['c1']);
  });

  it('marks a version ready and keeps only the chunks it references (and no partial writes)', async () => {
    const [a, b, c] = [1, 2, 3].map((seed) => pseudoRandom(100, seed));
    for (const chunk of [a!, b!, c!]) await cache.put('c1', sha(chunk), chunk);
    writeFileSync(join(dir, 'c1', `${sha(a!)}.leftover.partial`), 'half');
    expect(await cache.readyVersion('c1')).toBeUndefined();
    await cache.markReady('c1', 7, new Set([sha(a!), sha(c!)]));
    expect(await cache.readyVersion('c1')).toBe(7);
    expect(await cache.chunkHashes('c1')).toEqual(new Set([sha(a!), sha(c!)]));
    expect(readdirSync(join(dir, 'c1')).sort()).toEqual([sha(a!), sha(c!), 'ready'].sort());
  });

  it('drops a container whole, and lists nothing in a cache directory that does not exist yet', async () => {
    const a = pseudoRandom(10, 4);
    await cache.put('c1', sha(a), a);
    await cache.drop('c1');
    expect(await cache.containers()).toEqual([]);
    expect(await new StandbyCache(join(dir, 'not-yet')).containers()).toEqual([]);
  });

  it('refuses names that would reach outside its directory', async () => {
    const a = pseudoRandom(10, 5);
    await expect(cache.put('../etc', sha(a), a)).rejects.toThrow(/cannot name a standby cache directory/);
    await expect(cache.put('c1', '../../x', a)).rejects.toThrow(/is not a hex sha256/);
  });
});
