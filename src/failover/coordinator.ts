import type { RestoreResponse__Output } from '../api/generated/lxcr/v1/RestoreResponse.ts';
import type { EventLog } from '../cluster/events.ts';
import type { GossipView } from '../cluster/gossip.ts';
import type { ClusterRegistry, HostRecord, Ownership } from '../cluster/registry.ts';
import type { RingView } from '../cluster/ring.ts';
import type { SnapshotStore } from '../storage/store.ts';
import { mapBounded } from '../util/concurrency.ts';
import { LxcrError, errorMessage } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';

/**
 * Failure handling, LXCloud-CR's Algorithm 3: when gossip shows a host DN, each container it owned is restored
 * on the first live replica host of its snapshots (token-map order), which restores from its own local data;
 * a restore that fails moves on to the next candidate (the other replica, then any other live host, which reads
 * the data remotely); with both replica hosts DN the container is marked "replicas not found" and restored as
 * soon as one of them is back.
 *
 * Every agent runs a coordinator over the same gossip view and registry. The first live host by host id acts at
 * once; the others act only on failures still unhandled after `followerDelayMs`, so a coordinator that dies
 * half-way is replaced. Duplicated requests are harmless: the target claims each container with a lightweight
 * transaction on its ownership epoch, and only one claim per epoch can win.
 */

export interface RestoreClient {
  restore(
    request: { container: string; expectedEpoch: number; fromHost: string; requestedBy: string },
    timeoutMs: number,
  ): Promise<RestoreResponse__Output>;
}

export interface CoordinatorDeps {
  hostId: string;
  gossip: GossipView;
  registry: ClusterRegistry;
  /** For each container's replica hosts, from the driver's token map. */
  store: Pick<SnapshotStore, 'replicas'>;
  events: EventLog;
  /** The gRPC client of the agent at an endpoint. */
  clientFor: (endpoint: string) => RestoreClient;
  logger: Logger;
  /** Where the coordinator keeps the containers it found with both replica hosts down; default its own set. */
  replicasNotFound?: Set<string>;
  /** Restores requested at once. Default 8: a restore from a standby copy is mostly waits (claims, events, lxc-checkpoint -r). */
  concurrency?: number;
  /** How long one Restore call may take. Default 5 min. */
  restoreTimeoutMs?: number;
  /** How often the registry is checked for orphaned containers even without a gossip change. Default 5 s. */
  reconcileMs?: number;
  /**
   * How long non-leading coordinators leave a failure they see to the leader. Default 2 s: each node convicts a
   * dead host on its own clock (seconds apart), and a duplicate request costs only a refused claim.
   */
  followerDelayMs?: number;
  /** How long after a failed restore the container is tried again. Default 10 s. */
  retryMs?: number;
  /** How long a container may stay released (handed off, unclaimed) before it is restored elsewhere. Default 60 s. */
  releasedTimeoutMs?: number;
}

export interface FailoverOutcome {
  container: string;
  result: 'restored' | 'replicas-not-found' | 'claimed-elsewhere' | 'failed';
  host?: string;
  detail?: string;
}

/**
 * Restores requested at once. A restore from an assembled standby copy is mostly `lxc-checkpoint -r`, CPU-bound:
 * bench:failover measured 20 containers of 64 MiB all running 4.1 s after DN with 8 at once and 2.8 s with all
 * at once (2 cores, 3 hosts). The bound is for hosts with many more containers.
 */
const DEFAULT_CONCURRENCY = 32;

export class FailoverCoordinator {
  private readonly log: Logger;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private running: Promise<FailoverOutcome[]> | undefined;
  private rerun = false;
  /** When each orphaned container was first seen, for the follower delay. */
  private readonly firstSeen = new Map<string, number>();
  private readonly announcedDown = new Set<string>();
  /**
   * Containers whose owner and both replica hosts are down, as this coordinator last saw them. Shared with the
   * public API (deps.replicasNotFound), which shows them so even when the registry, short of a quorum, could not
   * be told.
   */
  readonly replicasNotFound: Set<string>;

  constructor(private readonly deps: CoordinatorDeps) {
    this.log = deps.logger.child('failover');
    this.replicasNotFound = deps.replicasNotFound ?? new Set();
  }

  start(): void {
    this.unsubscribe = this.deps.gossip.on('change', () => void this.reconcile());
    this.timer = setInterval(() => void this.reconcile(), this.deps.reconcileMs ?? 5000);
  }

  async stop(): Promise<void> {
    this.unsubscribe?.();
    if (this.timer) clearInterval(this.timer);
    await this.running?.catch(() => undefined);
  }

  /** One pass over the registry; passes never overlap (a request during one runs one more pass after it). */
  reconcile(): Promise<FailoverOutcome[]> {
    if (this.running) {
      this.rerun = true;
      return this.running;
    }
    this.running = this.pass()
      .catch((err: unknown) => {
        this.log.error('failover pass failed; the next one retries', { error: errorMessage(err) });
        return [];
      })
      .finally(() => {
        this.running = undefined;
        if (this.rerun) {
          this.rerun = false;
          void this.reconcile();
        }
      });
    return this.running;
  }

  private async pass(): Promise<FailoverOutcome[]> {
    const view = this.deps.gossip.current();
    if (!view) return []; // no trustworthy view: never act on a guess
    await this.deps.events.flush();
    // Degraded reads: with most hosts down the registry has no quorum, but what it holds still tells which
    // containers are lost; claims and state changes stay quorum-only.
    const hosts = await this.deps.registry.hosts({ degraded: true });
    const down = new Set(hosts.filter((h) => view.get(h.cassandraAddress)?.status === 'D').map((h) => h.hostId));
    await this.announce(down);
    // A host whose agent left gracefully is not down (its containers run on), but it leads nothing.
    const live = hosts.filter((h) => view.get(h.cassandraAddress)?.status === 'U' && h.agentState === 'serving').sort((a, b) => a.hostId.localeCompare(b.hostId));
    if (!live.some((h) => h.hostId === this.deps.hostId)) return [];
    const leader = live[0]!.hostId === this.deps.hostId;

    const now = Date.now();
    const orphans = (await this.deps.registry.allOwnership({ degraded: true })).filter(
      (o) => down.has(o.owner) || (o.state === 'restore-failed' && this.retryDue(o, now)) || this.stuckRestoring(o, now) || this.stuckReleased(o, now),
    );
    for (const container of this.firstSeen.keys()) if (!orphans.some((o) => o.container === container)) this.firstSeen.delete(container);
    for (const container of this.replicasNotFound) if (!orphans.some((o) => o.container === container)) this.replicasNotFound.delete(container);
    for (const o of orphans) if (!this.firstSeen.has(o.container)) this.firstSeen.set(o.container, now);
    const due = orphans.filter((o) => leader || now - this.firstSeen.get(o.container)! >= (this.deps.followerDelayMs ?? 2000));
    if (due.length === 0) return [];
    this.log.warn('restoring the containers of failed hosts', { containers: due.map((o) => o.container), leader });
    return mapBounded(due, this.deps.concurrency ?? DEFAULT_CONCURRENCY, (o) => this.failOver(o, view, hosts));
  }

  /** A failed restore is tried again after `retryMs` since its last change, so a lasting fault is not hammered. */
  private retryDue(o: Ownership, now: number): boolean {
    return now - o.updatedAt.getTime() >= (this.deps.retryMs ?? 10_000);
  }

  /**
   * A container released for a migration that neither its target claimed nor its owner took back (its agent
   * restarted in between, forgetting the hand-off): after a minute it is restored like a failed host's.
   */
  private stuckReleased(o: Ownership, now: number): boolean {
    return o.state === 'released' && now - o.updatedAt.getTime() > (this.deps.releasedTimeoutMs ?? 60_000);
  }

  /** A restore claimed by a live host that has not finished in twice the restore timeout: its agent gave up or died. */
  private stuckRestoring(o: Ownership, now: number): boolean {
    return o.state === 'restoring' && now - o.updatedAt.getTime() > 2 * (this.deps.restoreTimeoutMs ?? 300_000);
  }

  private async announce(down: Set<string>): Promise<void> {
    for (const host of down) {
      if (this.announcedDown.has(host)) continue;
      this.announcedDown.add(host);
      this.log.warn('host is down in the gossip view', { host });
      await this.deps.events.record({ kind: 'host-down', host: this.deps.hostId, detail: `${host} seen DN` });
    }
    for (const host of [...this.announcedDown]) {
      if (down.has(host)) continue;
      this.announcedDown.delete(host);
      await this.deps.events.record({ kind: 'host-up', host: this.deps.hostId, detail: `${host} seen UN again` });
    }
  }

  /** The candidate hosts for a container: its live replica hosts in token-map order, then every other live host. */
  candidates(container: string, view: RingView, hosts: readonly HostRecord[]): { replicaAddresses: string[]; replicas: HostRecord[]; others: HostRecord[] } {
    const byAddress = new Map(hosts.map((h) => [h.cassandraAddress, h]));
    const replicaAddresses = this.deps.store.replicas(container);
    const replicas = replicaAddresses.flatMap((a) => (view.get(a)?.status === 'U' && byAddress.has(a) ? [byAddress.get(a)!] : []));
    const others = hosts.filter((h) => view.get(h.cassandraAddress)?.status === 'U' && !replicaAddresses.includes(h.cassandraAddress));
    return { replicaAddresses, replicas, others };
  }

  private async failOver(orphan: Ownership, view: RingView, hosts: readonly HostRecord[]): Promise<FailoverOutcome> {
    const { container } = orphan;
    const { replicaAddresses, replicas, others } = this.candidates(container, view, hosts);
    if (replicas.length === 0) {
      // Both replica hosts are down: the snapshot cannot be read anywhere until one of them is back.
      if (!this.replicasNotFound.has(container)) {
        this.replicasNotFound.add(container);
        this.log.error('replicas not found: both replica hosts of the container are down; it is restored when one returns', { container, replicas: replicaAddresses });
        await this.deps.events.record({ kind: 'replicas-not-found', host: this.deps.hostId, container, epoch: orphan.epoch, outcome: 'failed', detail: `replicas ${replicaAddresses.join(', ')} are down` });
      }
      if (orphan.state !== 'replicas-not-found') {
        await this.deps.registry.setState(container, orphan.owner, orphan.epoch, 'replicas-not-found').catch((err: unknown) => {
          this.log.warn('could not mark replicas-not-found in the registry (no quorum?); retried on the next pass', { container, error: errorMessage(err) });
        });
      }
      return { container, result: 'replicas-not-found' };
    }
    this.replicasNotFound.delete(container);
    let epoch = orphan.epoch;
    const failures: string[] = [];
    // A host whose agent left gracefully cannot restore anything; its node still serves the snapshot's data.
    for (const target of [...replicas, ...others].filter((h) => h.agentState === 'serving')) {
      await this.deps.events.record({ kind: 'restore-requested', host: this.deps.hostId, container, epoch, detail: `on ${target.hostId}, from ${orphan.owner}` });
      try {
        const response = await this.deps.clientFor(target.grpcEndpoint).restore(
          { container, expectedEpoch: epoch, fromHost: orphan.owner, requestedBy: this.deps.hostId },
          this.deps.restoreTimeoutMs ?? 300_000,
        );
        return { container, result: 'restored', host: response.host };
      } catch (err) {
        failures.push(`${target.hostId}: ${errorMessage(err)}`);
        const now = await this.deps.registry.ownership(container);
        if (!now) return { container, result: 'failed', detail: 'the container left the registry' };
        if (now.state === 'running' && !isDown(view, hosts, now.owner)) return { container, result: 'claimed-elsewhere', host: now.owner };
        if (err instanceof LxcrError && err.code === 'ABORTED' && now.owner !== target.hostId && now.state === 'restoring') {
          return { container, result: 'claimed-elsewhere', host: now.owner }; // another coordinator's request is restoring it
        }
        epoch = now.epoch; // the failed target may hold the claim now: the next one claims from that epoch
        this.log.warn('restore failed; trying the next candidate host', { container, target: target.hostId, error: errorMessage(err) });
      }
    }
    return { container, result: 'failed', detail: failures.join('; ') };
  }
}

/** Whether the gossip view shows `hostId`'s Cassandra node DN. */
function isDown(view: RingView, hosts: readonly HostRecord[], hostId: string): boolean {
  const address = hosts.find((h) => h.hostId === hostId)?.cassandraAddress;
  return address === undefined || view.get(address)?.status !== 'U';
}
