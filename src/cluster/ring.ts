/**
 * The ring as Cassandra's gossip sees it, in the vocabulary of `nodetool status`: a two-letter state per node,
 * status (U = up, D = down) then state (N = normal, L = leaving, J = joining, M = moving).
 */
export type NodeStatus = 'U' | 'D';
export type NodeState = 'N' | 'L' | 'J' | 'M';

export interface RingMember {
  /** The node's listen address, e.g. 127.0.10.2. */
  address: string;
  status: NodeStatus;
  state: NodeState;
  /** Cassandra's host id (a UUID), as gossip reports it. */
  hostId: string;
  /** The node's rack, as the snitch reports it. */
  rack: string;
  datacenter: string;
}

export type RingView = ReadonlyMap<string, RingMember>;

export function statusCode(member: Pick<RingMember, 'status' | 'state'>): string {
  return `${member.status}${member.state}`;
}

export function isUp(member: RingMember | undefined): boolean {
  return member?.status === 'U';
}

/** The UN/DN table as an operator reads it. */
export function formatRing(view: RingView): string {
  const rows = [...view.values()].sort((a, b) => compareAddresses(a.address, b.address));
  const lines = ['--  Address          Host ID                               Rack   DC'];
  for (const m of rows) {
    lines.push(`${statusCode(m)}  ${m.address.padEnd(15)}  ${m.hostId.padEnd(36)}  ${m.rack.padEnd(5)}  ${m.datacenter}`);
  }
  return lines.join('\n');
}

export function compareAddresses(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}
