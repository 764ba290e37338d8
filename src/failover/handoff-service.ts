import type { HostSupervisor } from '../actors/host-supervisor.ts';
import type { ValidHandoffRequest } from '../api/agent-server.ts';
import type { HandoffResponse } from '../api/generated/lxcr/v1/HandoffResponse.ts';
import type { EventLog } from '../cluster/events.ts';
import type { ClusterRegistry } from '../cluster/registry.ts';
import { ConflictError } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';

/**
 * The owner's side of moving a container elsewhere (a migration, or a restore asked for on another host or
 * from another version): it stops the container here — after a last checkpoint that stops it once dumped, for a
 * migration — and marks it released at its epoch, so its next owner claims it from there. The container never
 * runs on two hosts: it is stopped here before anyone may claim it.
 */

export interface HandoffServiceDeps {
  hostId: string;
  registry: Pick<ClusterRegistry, 'ownership' | 'setState'>;
  events: Pick<EventLog, 'record'>;
  supervisor: Pick<HostSupervisor, 'handOff'>;
  logger: Logger;
}

export class HandoffService {
  constructor(private readonly deps: HandoffServiceDeps) {}

  async handOff(request: ValidHandoffRequest): Promise<HandoffResponse> {
    const { hostId, registry } = this.deps;
    const { container, expectedEpoch } = request;
    const current = await registry.ownership(container);
    if (current?.owner !== hostId || current.epoch !== expectedEpoch || current.state !== 'running') {
      const now = current ? `${current.owner} at epoch ${current.epoch}, ${current.state}` : 'nobody';
      throw new ConflictError(`${container} is not running on ${hostId} at epoch ${expectedEpoch} (owned by ${now}): nothing was handed off`);
    }
    const started = performance.now();
    const result = await this.deps.supervisor.handOff(container, { checkpoint: request.checkpoint });
    if (!(await registry.setState(container, hostId, expectedEpoch, 'released'))) {
      // Moved on while it was being stopped (a failover took this host for dead): this copy is stale now.
      throw new ConflictError(`${container} changed owner while ${hostId} was handing it off; its copy here is stopped and will be destroyed`);
    }
    await this.deps.events.record({
      kind: 'handed-off', host: hostId, container, epoch: expectedEpoch, version: result.version, durationMs: performance.now() - started, outcome: 'ok',
      detail: `${request.checkpoint ? 'last checkpoint, then stopped' : 'stopped'}; asked by ${request.requestedBy || 'unknown'}`,
    });
    this.deps.logger.info('container handed off', { container, epoch: expectedEpoch, version: result.version, requestedBy: request.requestedBy });
    return { container, version: result.version ?? 0, epoch: expectedEpoch, freezeMs: result.freezeMs ?? 0 };
  }
}
