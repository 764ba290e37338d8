import { validateContainerName } from '../runtime/lxc.ts';
import { InvalidArgumentError, errorMessage } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';
import type { CheckpointResponse } from './generated/lxcr/v1/CheckpointResponse.ts';
import type { ClusterServiceHandlers } from './generated/lxcr/v1/ClusterService.ts';
import type { ListContainersResponse } from './generated/lxcr/v1/ListContainersResponse.ts';
import type { ListHostsResponse } from './generated/lxcr/v1/ListHostsResponse.ts';
import type { ListSnapshotsResponse } from './generated/lxcr/v1/ListSnapshotsResponse.ts';
import { unaryHandler } from './unary.ts';

/** What the agent does for the public API's calls; this layer only validates, calls and maps errors. */
export interface ClusterOperations {
  listHosts(): Promise<ListHostsResponse>;
  listContainers(): Promise<ListContainersResponse>;
  listSnapshots(container: string): Promise<ListSnapshotsResponse>;
  /** `forwardedBy`: the host id of the agent that forwarded the request to this one, or '' from a client. */
  checkpoint(container: string, forwardedBy: string): Promise<CheckpointResponse>;
}

/** A request's container name, checked: an INVALID_ARGUMENT error names the call and what is wrong. */
export function requireContainerName(call: string, name: unknown): string {
  try {
    return validateContainerName(name);
  } catch (err) {
    throw new InvalidArgumentError(`invalid ${call} request: ${errorMessage(err)}`);
  }
}

export function clusterHandlers(operations: ClusterOperations, log: Logger): ClusterServiceHandlers {
  return {
    ListHosts: unaryHandler(log, 'ListHosts', () => ({}), () => operations.listHosts()),
    ListContainers: unaryHandler(log, 'ListContainers', () => ({}), () => operations.listContainers()),
    ListSnapshots: unaryHandler(log, 'ListSnapshots', (request) => ({ container: request.container }), (request) => operations.listSnapshots(requireContainerName('ListSnapshots', request.container))),
    Checkpoint: unaryHandler(log, 'Checkpoint', (request) => ({ container: request.container, forwardedBy: request.forwardedBy }), (request) =>
      operations.checkpoint(requireContainerName('Checkpoint', request.container), request.forwardedBy),
    ),
  };
}
