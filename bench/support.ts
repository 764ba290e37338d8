import type cassandra from 'cassandra-driver';
import { clientFor } from '../testcontainers/client.ts';
import type { Testbed } from '../testcontainers/testbed.ts';

/** A driver client for a benchmark's own testbed, connected. */
export async function connectBenchClient(testbed: Testbed, readTimeoutMs: number): Promise<cassandra.Client> {
  const client = clientFor(testbed, readTimeoutMs);
  await client.connect();
  return client;
}

export const round = (n: number, digits = 2) => Number(n.toFixed(digits));
export const log = (line: string) => process.stderr.write(`${line}\n`);
