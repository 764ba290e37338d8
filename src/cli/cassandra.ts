import cassandra from 'cassandra-driver';
import { UnavailableError, errorMessage } from '../util/errors.ts';
import { intFlag, stringFlag, type ParsedArgs } from './args.ts';

/** The options of the commands that talk to Cassandra directly rather than to an agent. */
export const CASSANDRA_FLAGS = {
  cassandra: { value: true, description: 'Cassandra contact points, comma-separated (default $LXCR_CASSANDRA or 127.0.0.1)' },
  port: { value: true, description: 'their CQL port (default 9042)' },
  dc: { value: true, description: 'the local data center (default datacenter1)' },
} as const;

/** Runs `task` with a client connected to the cluster CASSANDRA_FLAGS name; an unreachable cluster is UNAVAILABLE. */
export async function withCassandra<T>(args: ParsedArgs, task: (client: cassandra.Client) => Promise<T>): Promise<T> {
  const contactPoints = stringFlag(args, 'cassandra', process.env.LXCR_CASSANDRA || '127.0.0.1').split(',').filter(Boolean);
  const client = new cassandra.Client({
    contactPoints,
    localDataCenter: stringFlag(args, 'dc', 'datacenter1'),
    protocolOptions: { port: intFlag(args, 'port', 9042, 1, 65_535), maxVersion: 3 },
    socketOptions: { connectTimeout: 5000, readTimeout: 20_000 },
  });
  try {
    await client.connect().catch((err: unknown) => {
      throw new UnavailableError(`cannot reach Cassandra at ${contactPoints.join(', ')}: ${errorMessage(err)}`, { cause: err });
    });
    return await task(client);
  } finally {
    await client.shutdown();
  }
}
