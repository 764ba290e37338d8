// An agent that dies mid-upload: it uploads a snapshot whose second file never ends, reports once some of the
// first file's chunks are written (none indexed: the version never commits), and waits to be SIGKILLed by the test.
import { randomBytes } from 'node:crypto';
import { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { CompressionPolicy } from '../../src/storage/codec.ts';
import { uploadSnapshot } from '../../src/storage/snapshots.ts';
import type { ChunkLocation } from '../../src/storage/store.ts';
import { clientFor } from '../../testcontainers/client.ts';
import { sharedTestbed } from './testbed.ts';

const [keyspace, container] = process.argv.slice(2) as [string, string];
const client = clientFor(sharedTestbed());
await client.connect();
const store = new CassandraSnapshotStore({ client, keyspace });

// Counts the chunks written; the writes themselves are the real store's.
let written = 0;
const counting = Object.assign(Object.create(store) as CassandraSnapshotStore, {
  putChunk: async (name: string, location: ChunkLocation, data: Buffer) => {
    await store.putChunk(name, location, data);
    written++;
  },
});

async function* forever(): AsyncGenerator<Uint8Array> {
  // Puts run in the background: report once a few chunks are durable, so the crash leaves orphans to collect.
  while (written < 4) await new Promise((r) => setTimeout(r, 50));
  process.stdout.write('UPLOADING\n');
  await new Promise(() => undefined);
  yield Buffer.alloc(0);
}

await uploadSnapshot({
  store: counting, container, sourceHost: 'crashing-agent', policy: new CompressionPolicy(), concurrency: 1,
  sources: [
    { path: 'images/pages.img', mode: 0o600, open: () => [randomBytes(16 * 1024 * 1024)] },
    { path: 'rootfs.tar', mode: 0o600, open: forever },
  ],
});
