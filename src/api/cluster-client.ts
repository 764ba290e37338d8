import * as grpc from '@grpc/grpc-js';
import type { CheckpointResponse__Output } from './generated/lxcr/v1/CheckpointResponse.ts';
import type { ClusterServiceClient } from './generated/lxcr/v1/ClusterService.ts';
import type { ListContainersResponse__Output } from './generated/lxcr/v1/ListContainersResponse.ts';
import type { ListHostsResponse__Output } from './generated/lxcr/v1/ListHostsResponse.ts';
import type { ListSnapshotsResponse__Output } from './generated/lxcr/v1/ListSnapshotsResponse.ts';
import type { MoveResponse__Output } from './generated/lxcr/v1/MoveResponse.ts';
import { bearerMetadata } from './auth.ts';
import { clusterProto } from './proto.ts';
import { fromServiceError } from './status.ts';
import { callUnary } from './unary.ts';
import type { Event__Output } from './generated/lxcr/v1/Event.ts';
import type { StreamEventsRequest } from './generated/lxcr/v1/StreamEventsRequest.ts';
import type { TransferProgress__Output } from './generated/lxcr/v1/TransferProgress.ts';

/** A server stream being read: `done` settles when it ends or fails; `cancel` ends it early (done then resolves). */
export interface ServerStream {
  done: Promise<void>;
  cancel(): void;
}

/** A client of the public API (any agent answers for the whole cluster). Errors come back as our coded errors. */
export class ClusterClient {
  private readonly client: ClusterServiceClient;

  private readonly timeoutMs: number;
  /** Sent with every call: the bearer token, when one is given. */
  private readonly metadata: grpc.Metadata;

  constructor(
    readonly endpoint: string,
    credentials: grpc.ChannelCredentials,
    options: {
      /** Default deadline of the short calls. Default 30 s. */
      timeoutMs?: number;
      /** The cluster's bearer token, for agents that ask for one (see auth.ts). */
      token?: string;
    } = {},
  ) {
    this.client = new clusterProto.lxcr.v1.ClusterService(endpoint, credentials);
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.metadata = bearerMetadata(options.token);
  }

  listHosts(): Promise<ListHostsResponse__Output> {
    return callUnary(`ListHosts on ${this.endpoint}`, this.timeoutMs, (options, callback) => this.client.ListHosts({}, this.metadata, options, callback));
  }

  listContainers(): Promise<ListContainersResponse__Output> {
    return callUnary(`ListContainers on ${this.endpoint}`, this.timeoutMs, (options, callback) => this.client.ListContainers({}, this.metadata, options, callback));
  }

  listSnapshots(container: string): Promise<ListSnapshotsResponse__Output> {
    return callUnary(`ListSnapshots of ${container} on ${this.endpoint}`, this.timeoutMs, (options, callback) => this.client.ListSnapshots({ container }, this.metadata, options, callback));
  }

  /** A checkpoint waits for its upload: give it the time a large container needs (default 10 min). */
  checkpoint(container: string, forwardedBy = '', timeoutMs = 10 * 60_000): Promise<CheckpointResponse__Output> {
    return callUnary(`Checkpoint of ${container} on ${this.endpoint}`, timeoutMs, (options, callback) => this.client.Checkpoint({ container, forwardedBy }, this.metadata, options, callback));
  }

  /** A migration checkpoints, uploads and restores: give it the time a large container needs (default 20 min). */
  migrate(container: string, targetHost: string, timeoutMs = 20 * 60_000): Promise<MoveResponse__Output> {
    return callUnary(`Migrate of ${container} to ${targetHost} via ${this.endpoint}`, timeoutMs, (options, callback) => this.client.Migrate({ container, targetHost }, this.metadata, options, callback));
  }

  /** `version` 0: the newest committed; `targetHost` '': the default host. */
  restore(container: string, version = 0, targetHost = '', timeoutMs = 20 * 60_000): Promise<MoveResponse__Output> {
    return callUnary(`Restore of ${container} via ${this.endpoint}`, timeoutMs, (options, callback) => this.client.Restore({ container, version, targetHost }, this.metadata, options, callback));
  }

  /**
   * The audit trail as a stream: each event to `onEvent`, oldest first. `done` settles when the stream ends (without
   * follow, after the last event) or fails; `cancel` ends a followed stream.
   */
  streamEvents(request: StreamEventsRequest, onEvent: (event: Event__Output) => void): ServerStream {
    return this.follow(`StreamEvents on ${this.endpoint}`, this.client.StreamEvents(request, this.metadata), onEvent);
  }

  /**
   * The progress of `container`'s transfer (see WatchTransfer in cluster.proto): each message to `onProgress`;
   * `done` settles when the transfer ends, at once when none runs. `forwardedBy`: set by a relaying agent.
   */
  watchTransfer(container: string, onProgress: (progress: TransferProgress__Output) => void, forwardedBy = ''): ServerStream {
    return this.follow(`WatchTransfer of ${container} on ${this.endpoint}`, this.client.WatchTransfer({ container, forwardedBy }, this.metadata), onProgress);
  }

  private follow<T>(what: string, call: grpc.ClientReadableStream<T>, onMessage: (message: T) => void): ServerStream {
    let cancelled = false;
    const done = new Promise<void>((resolve, reject) => {
      call.on('data', onMessage);
      call.on('end', () => resolve());
      call.on('error', (err: grpc.ServiceError) => (cancelled && err.code === grpc.status.CANCELLED ? resolve() : reject(fromServiceError(err, what))));
    });
    return {
      done,
      cancel: () => {
        cancelled = true;
        call.cancel();
      },
    };
  }

  close(): void {
    this.client.close();
  }
}
