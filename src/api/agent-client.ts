import * as grpc from '@grpc/grpc-js';
import type { ServingStatus } from './health.ts';
import type { AgentServiceClient } from './generated/lxcr/v1/AgentService.ts';
import type { HealthClient } from './generated/grpc/health/v1/Health.ts';
import type { RestoreRequest } from './generated/lxcr/v1/RestoreRequest.ts';
import type { RestoreResponse__Output } from './generated/lxcr/v1/RestoreResponse.ts';
import { agentProto, healthProto } from './proto.ts';
import { fromServiceError } from './status.ts';

/** Another agent, as seen over gRPC: its Restore and its health. Errors come back as our coded errors. */
export class AgentClient {
  private readonly agent: AgentServiceClient;
  private readonly healthClient: HealthClient;

  constructor(
    readonly endpoint: string,
    credentials: grpc.ChannelCredentials,
  ) {
    this.agent = new agentProto.lxcr.v1.AgentService(endpoint, credentials);
    this.healthClient = new healthProto.grpc.health.v1.Health(endpoint, credentials);
  }

  restore(request: RestoreRequest, timeoutMs: number): Promise<RestoreResponse__Output> {
    return new Promise((resolve, reject) => {
      this.agent.Restore(request, { deadline: Date.now() + timeoutMs }, (err, response) => {
        if (err) reject(fromServiceError(err, `Restore of ${request.container} on ${this.endpoint}`));
        else resolve(response!);
      });
    });
  }

  health(service = '', timeoutMs = 2000): Promise<ServingStatus> {
    return new Promise((resolve, reject) => {
      this.healthClient.Check({ service }, { deadline: Date.now() + timeoutMs }, (err, response) => {
        if (err) reject(fromServiceError(err, `health check of ${this.endpoint}`));
        else resolve(response!.status);
      });
    });
  }

  close(): void {
    this.agent.close();
    this.healthClient.close();
  }
}
