import { validateHostId } from '../cluster/registry.ts';
import { validateContainerName } from '../runtime/lxc.ts';
import { InvalidArgumentError, errorMessage } from '../util/errors.ts';
import type { CheckpointResponse } from './generated/lxcr/v1/CheckpointResponse.ts';
import type { ClusterServiceHandlers } from './generated/lxcr/v1/ClusterService.ts';
import type { ListContainersResponse } from './generated/lxcr/v1/ListContainersResponse.ts';
import type { ListHostsResponse } from './generated/lxcr/v1/ListHostsResponse.ts';
import type { ListSnapshotsResponse } from './generated/lxcr/v1/ListSnapshotsResponse.ts';
import type { MoveResponse } from './generated/lxcr/v1/MoveResponse.ts';
import { unaryHandler, type HandlerContext } from './unary.ts';

/** What the agent does for the public API's calls; this layer only validates, calls and maps errors. */
export interface ClusterOperations {
  listHosts(): Promise<ListHostsResponse>;
  listContainers(): Promise<ListContainersResponse>;
  listSnapshots(container: string): Promise<ListSnapshotsResponse>;
  /** `forwardedBy`: the host id of the agent that forwarded the request to this one, or '' from a client. */
  checkpoint(container: string, forwardedBy: string): Promise<CheckpointResponse>;
  migrate(container: string, targetHost: string): Promise<MoveResponse>;
  /** `version` undefined: the newest committed; `targetHost` undefined: the default host. */
  restore(container: string, version: number | undefined, targetHost: string | undefined): Promise<MoveResponse>;
}

/** A request's host id, checked like the registry checks it. */
function requireHostId(call: string, field: string, hostId: string): string {
  if (!hostId) throw new InvalidArgumentError(`invalid ${call} request: ${field} is required`);
  try {
    validateHostId(hostId);
  } catch (err) {
    throw new InvalidArgumentError(`invalid ${call} request: ${field}: ${errorMessage(err)}`);
  }
  return hostId;
}

/** A request's container name, checked: an INVALID_ARGUMENT error names the call and what is wrong. */
export function requireContainerName(call: string, name: unknown): string {
  try {
    return validateContainerName(name);
  } catch (err) {
    throw new InvalidArgumentError(`invalid ${call} request: ${errorMessage(err)}`);
  }
}

export function clusterHandlers(operations: ClusterOperations, context: HandlerContext): ClusterServiceHandlers {
  return {
    ListHosts: unaryHandler(context, 'ListHosts', () => ({}), () => operations.listHosts()),
    ListContainers: unaryHandler(context, 'ListContainers', () => ({}), () => operations.listContainers()),
    ListSnapshots: unaryHandler(context, 'ListSnapshots', (request) => ({ container: request.container }), (request) => operations.listSnapshots(requireContainerName('ListSnapshots', request.container))),
    Migrate: unaryHandler(context, 'Migrate', (request) => ({ container: request.container, targetHost: request.targetHost }), (request) =>
      operations.migrate(requireContainerName('Migrate', request.container), requireHostId('Migrate', 'target_host', request.targetHost)),
    ),
    Restore: unaryHandler(context, 'Restore', (request) => ({ container: request.container, version: request.version, targetHost: request.targetHost }), (request) => {
      const container = requireContainerName('Restore', request.container);
      if (!Number.isSafeInteger(request.version) || request.version < 0) throw new InvalidArgumentError(`invalid Restore request: version must be a non-negative integer, got ${request.version}`);
      const target = request.targetHost ? requireHostId('Restore', 'target_host', request.targetHost) : undefined;
      return operations.restore(container, request.version || undefined, target);
    }),
    Checkpoint: unaryHandler(context, 'Checkpoint', (request) => ({ container: request.container, forwardedBy: request.forwardedBy }), (request) =>
      operations.checkpoint(requireContainerName('Checkpoint', request.container), request.forwardedBy),
    ),
  };
}
