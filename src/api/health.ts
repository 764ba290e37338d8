import * as grpc from '@grpc/grpc-js';
import type { HealthHandlers } from './generated/grpc/health/v1/Health.ts';
import type { HealthCheckRequest__Output } from './generated/grpc/health/v1/HealthCheckRequest.ts';
import type { HealthCheckResponse, _grpc_health_v1_HealthCheckResponse_ServingStatus__Output as ServingStatus } from './generated/grpc/health/v1/HealthCheckResponse.ts';

export type { ServingStatus };

/**
 * The standard grpc.health.v1 service. The empty service name stands for the whole server; each service the
 * agent serves has its own status, which the agent turns to NOT_SERVING when it cannot do that service's job
 * (e.g. while shutting down).
 */
export class HealthService {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly watchers = new Set<{ service: string; call: grpc.ServerWritableStream<HealthCheckRequest__Output, HealthCheckResponse> }>();

  constructor(services: readonly string[]) {
    this.statuses.set('', 'SERVING');
    for (const service of services) this.statuses.set(service, 'SERVING');
  }

  status(service = ''): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  setStatus(service: string, status: ServingStatus): void {
    this.statuses.set(service, status);
    for (const watcher of this.watchers) if (watcher.service === service) watcher.call.write({ status });
  }

  /** Every service NOT_SERVING and every Watch stream ended: for shutdown. */
  shutdown(): void {
    for (const service of this.statuses.keys()) this.setStatus(service, 'NOT_SERVING');
    for (const watcher of this.watchers) watcher.call.end();
    this.watchers.clear();
  }

  readonly handlers: HealthHandlers = {
    Check: (call, callback) => {
      const status = this.statuses.get(call.request.service);
      if (status === undefined) callback({ code: grpc.status.NOT_FOUND, details: `unknown service "${call.request.service}"` });
      else callback(null, { status });
    },
    Watch: (call) => {
      const watcher = { service: call.request.service, call };
      this.watchers.add(watcher);
      call.write({ status: this.statuses.get(call.request.service) ?? 'SERVICE_UNKNOWN' });
      call.on('cancelled', () => this.watchers.delete(watcher));
    },
  };
}
