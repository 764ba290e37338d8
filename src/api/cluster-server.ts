import type { RecordedEvent } from '../cluster/events.ts';
import { InvalidArgumentError } from '../util/errors.ts';
import type { CheckpointResponse } from './generated/lxcr/v1/CheckpointResponse.ts';
import type { ClusterServiceHandlers } from './generated/lxcr/v1/ClusterService.ts';
import type { Event } from './generated/lxcr/v1/Event.ts';
import type { ListContainersResponse } from './generated/lxcr/v1/ListContainersResponse.ts';
import type { ListHostsResponse } from './generated/lxcr/v1/ListHostsResponse.ts';
import type { ListSnapshotsResponse } from './generated/lxcr/v1/ListSnapshotsResponse.ts';
import type { MoveResponse } from './generated/lxcr/v1/MoveResponse.ts';
import type { StreamEventsRequest__Output } from './generated/lxcr/v1/StreamEventsRequest.ts';
import type { TransferProgress } from './generated/lxcr/v1/TransferProgress.ts';
import { streamingHandler } from './streaming.ts';
import { unaryHandler, type HandlerContext } from './unary.ts';
import { requireContainerName, requireHostId } from './validation.ts';

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
  /** Audit events from `from` on (of one container, or all), oldest first. */
  eventsSince(from: Date, container: string | undefined): Promise<RecordedEvent[]>;
  /**
   * Writes the progress of `container`'s transfer until it ends (see WatchTransfer in cluster.proto); returns at
   * once when none runs. `forwardedBy`: as for checkpoint; set, only this agent's own transfers are watched.
   */
  watchTransfer(container: string, forwardedBy: string, write: (progress: TransferProgress) => void, signal: AbortSignal): Promise<void>;
}

/** How often a followed event stream looks for new events. */
const FOLLOW_POLL_MS = 1000;

/** The events asked for, then (with follow) each new one, until the client cancels. */
async function streamEvents(operations: ClusterOperations, request: StreamEventsRequest__Output, write: (event: Event) => void, signal: AbortSignal): Promise<void> {
  const container = request.container ? requireContainerName('StreamEvents', request.container) : undefined;
  if (request.sinceMs > Date.now() + 60_000) throw new InvalidArgumentError(`invalid StreamEvents request: since_ms ${request.sinceMs} is in the future`);
  let cursor = request.sinceMs > 0 ? request.sinceMs : Date.now() - 3600_000;
  // Events of the cursor's own millisecond already sent: the next read starts at that millisecond again.
  let sentAtCursor = new Set<string>();
  for (;;) {
    for (const event of await operations.eventsSince(new Date(cursor), container)) {
      if (signal.aborted) return;
      const key = JSON.stringify(event);
      const at = event.at.getTime();
      if (at === cursor && sentAtCursor.has(key)) continue;
      if (at > cursor) {
        cursor = at;
        sentAtCursor = new Set();
      }
      sentAtCursor.add(key);
      write(toWireEvent(event));
    }
    if (!request.follow || signal.aborted) return;
    await new Promise((resolve) => setTimeout(resolve, FOLLOW_POLL_MS));
    if (signal.aborted) return;
  }
}

function toWireEvent(e: RecordedEvent): Event {
  return {
    atMs: e.at.getTime(), kind: e.kind, host: e.host, container: e.container ?? '', epoch: e.epoch ?? 0, version: e.version ?? 0,
    durationMs: e.durationMs ?? 0, bytes: e.bytes ?? 0, outcome: e.outcome ?? '', detail: e.detail ?? '',
  };
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
    StreamEvents: streamingHandler(context, 'StreamEvents', (request) => ({ container: request.container }), (request, write, signal) => streamEvents(operations, request, write, signal)),
    WatchTransfer: streamingHandler(context, 'WatchTransfer', (request) => ({ container: request.container, forwardedBy: request.forwardedBy }), (request, write, signal) =>
      operations.watchTransfer(requireContainerName('WatchTransfer', request.container), request.forwardedBy, write, signal),
    ),
    Checkpoint: unaryHandler(context, 'Checkpoint', (request) => ({ container: request.container, forwardedBy: request.forwardedBy }), (request) =>
      operations.checkpoint(requireContainerName('Checkpoint', request.container), request.forwardedBy),
    ),
  };
}
