// An agent that dies mid-upload: it uploads a snapshot whose second file never ends, reports once the first
// file's chunks are registered (pending), and waits to be SIGKILLed by the test.
import { randomBytes } from 'node:crypto';
import { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { CompressionPolicy } from '../../src/storage/codec.ts';
import { uploadSnapshot } from '../../src/storage/snapshots.ts';
import { clientFor } from '../../testcontainers/client.ts';
import { sharedTestbed } from './testbed.ts';

const [keyspace, container] = process.argv.slice(2) as [string, string];
const client = clientFor(sharedTestbed());
await client.connect();
const store = new CassandraSnapshotStore({ client, keyspace });

async function* forever(): AsyncGenerator<Uint8Array> {
  // Registrations run in the background: report once the first file's chunks are in the index, so the crash
  // leaves orphans to collect.
  while ((await store.chunkIndex(container)).size === 0) await new Promise((r) => setTimeout(r, 50));
  process.stdout.write('UPLOADING\n');
  await new Promise(() => undefined);
  yield Buffer.alloc(0);
}

await uploadSnapshot({
  store, container, sourceHost: 'crashing-agent', policy: new CompressionPolicy(), concurrency: 1, registrationGroup: 4,
  sources: [
    { path: 'images/pages.img', mode: 0o600, open: () => [randomBytes(16 * 1024 * 1024)] },
    { path: 'rootfs.tar', mode: 0o600, open: forever },
  ],
});
