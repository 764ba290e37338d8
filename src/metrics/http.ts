import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseListenAddress } from '../util/address.ts';
import { InvalidArgumentError, errorMessage } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';
import { EXPOSITION_CONTENT_TYPE, type MetricsRegistry } from './registry.ts';

/** The metrics endpoint: `GET /metrics` answers the registry in the Prometheus text format; anything else 404. */

export interface MetricsServer {
  /** host:port it listens on (the real port when 0 was asked). */
  endpoint: string;
  stop(): Promise<void>;
}

export async function startMetricsServer(listen: string, registry: MetricsRegistry, logger: Logger): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(listen, 'the metrics listen address');
  const server = createServer((request, response) => {
    const path = (request.url ?? '/').split('?')[0];
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' }).end('only GET /metrics is served here\n');
    } else if (path !== '/metrics') {
      response.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: the metrics are at /metrics\n');
    } else {
      try {
        const body = registry.render();
        response.writeHead(200, { 'Content-Type': EXPOSITION_CONTENT_TYPE }).end(request.method === 'HEAD' ? undefined : body);
      } catch (err) {
        logger.error('rendering the metrics failed', { error: errorMessage(err) });
        response.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${errorMessage(err)}\n`);
      }
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch((err: unknown) => {
    throw new InvalidArgumentError(`the metrics endpoint cannot listen on ${listen}: ${errorMessage(err)}`, { cause: err });
  });
  const bound = (server.address() as AddressInfo).port;
  const endpoint = `${host.includes(':') ? `[${host}]` : host}:${bound}`;
  logger.info('metrics endpoint listening', { url: `http://${endpoint}/metrics` });
  return {
    endpoint,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
