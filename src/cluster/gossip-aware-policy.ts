import cassandra from 'cassandra-driver';

type Host = cassandra.Host;
type Base = cassandra.policies.loadBalancing.LoadBalancingPolicy;
type ExecutionOptions = Parameters<Base['newQueryPlan']>[1];

/**
 * A load-balancing policy that asks gossip before the driver's own idea of which hosts are up. The driver
 * never marks a hung (SIGSTOPped) node down: its connections stay open, so every request it routes there waits
 * for the read timeout. This wraps the default policy (token-aware, DC-aware) and moves every host the
 * gossip view shows DN to the end of each query plan: it is still tried if all else fails, since gossip can be
 * wrong or late, but never first.
 */
export class GossipAwarePolicy extends cassandra.policies.loadBalancing.LoadBalancingPolicy {
  constructor(
    private readonly child: cassandra.policies.loadBalancing.LoadBalancingPolicy,
    /** Whether gossip says the node at this address is down; undefined when gossip does not know. */
    private readonly isDown: (address: string) => boolean | undefined,
  ) {
    super();
  }

  override init(...args: Parameters<Base['init']>): void {
    this.child.init(...args);
  }

  override getDistance(host: Host): cassandra.types.distance {
    return this.child.getDistance(host);
  }

  override newQueryPlan(keyspace: string, executionOptions: ExecutionOptions, callback: (error: Error, iterator: Iterator<Host>) => void): void {
    this.child.newQueryPlan(keyspace, executionOptions, (error, plan) => {
      if (error) {
        callback(error, plan);
        return;
      }
      const isDown = this.isDown;
      function* reordered(): Generator<Host> {
        const later: Host[] = [];
        for (let next = plan.next(); !next.done; next = plan.next()) {
          if (isDown(next.value.address.split(':')[0]!) === true) later.push(next.value);
          else yield next.value;
        }
        yield* later;
      }
      callback(error, reordered());
    });
  }

  override getOptions(): Map<string, object> {
    return this.child.getOptions();
  }
}
