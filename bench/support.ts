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

/** The middle value (the mean of the two middle ones for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new Error('median of no values');
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}
