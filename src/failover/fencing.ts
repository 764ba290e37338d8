import type { OwnershipGuard } from '../actors/host-supervisor.ts';
import type { EventLog } from '../cluster/events.ts';
import type { ClusterRegistry } from '../cluster/registry.ts';
import { ConflictError } from '../util/errors.ts';

/**
 * Fencing by the registry: a host runs a container only while the registry names it the owner. A host that
 * comes back after being taken for dead finds its containers owned elsewhere at a newer epoch and destroys its
 * copies instead of running them. A container nobody owns yet is adopted by the host that runs it.
 */
export class RegistryOwnershipGuard implements OwnershipGuard {
  constructor(
    private readonly registry: ClusterRegistry,
    private readonly hostId: string,
    private readonly events: EventLog,
  ) {}

  async mayRun(container: string): Promise<boolean> {
    const adoption = await this.registry.adopt(container, this.hostId);
    if (adoption.won) {
      await this.events.record({ kind: 'container-adopted', host: this.hostId, container, epoch: adoption.ownership.epoch });
      return true;
    }
    const current = adoption.current;
    if (current?.owner !== this.hostId) return false;
    // Ours (an agent restart, or the end of a restore here): make sure the registry says it runs.
    if (current.state !== 'running') await this.registry.setState(container, this.hostId, current.epoch, 'running');
    return true;
  }

  async ownedElsewhere(containers: readonly string[]): Promise<Set<string>> {
    const wanted = new Set(containers);
    const owners = await this.registry.allOwnership();
    return new Set(owners.filter((o) => wanted.has(o.container) && o.owner !== this.hostId).map((o) => o.container));
  }

  async runningHere(containers: readonly string[]): Promise<Set<string>> {
    const wanted = new Set(containers);
    const owners = await this.registry.allOwnership();
    return new Set(owners.filter((o) => wanted.has(o.container) && o.owner === this.hostId && o.state === 'running').map((o) => o.container));
  }

  async checkStillOwner(container: string): Promise<void> {
    const current = await this.registry.ownership(container);
    if (current?.owner !== this.hostId) {
      const owner = current ? `${current.owner} at epoch ${current.epoch}` : 'nobody';
      throw new ConflictError(`${container} is owned by ${owner}, not ${this.hostId}: this host's checkpoint of it was not committed`);
    }
  }

  async reclaimReleased(container: string): Promise<boolean> {
    const current = await this.registry.ownership(container);
    if (current?.owner !== this.hostId || current.state !== 'released') return false;
    return this.registry.setState(container, this.hostId, current.epoch, 'running');
  }

  async destroyedStale(container: string): Promise<void> {
    const current = await this.registry.ownership(container);
    await this.events.record({
      kind: 'stale-copy-destroyed', host: this.hostId, container, epoch: current?.epoch,
      detail: current ? `owned by ${current.owner} at epoch ${current.epoch}` : 'no longer in the registry',
    });
  }
}
