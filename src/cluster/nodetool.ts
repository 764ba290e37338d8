import { InvalidArgumentError } from '../util/errors.ts';
import type { NodeState, NodeStatus, RingMember, RingView } from './ring.ts';

// Status, address, load and ownership, the host id, then (with one token per node) the token, then the rack.
const STATUS_LINE =
  /^([UD])([NLJM])\s+(\S+)\s+.*?\s([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\s+(?:-?\d+\s+)?(\S+)\s*$/;

/**
 * Parses the output of `nodetool status` into a ring view. Lines that are not node rows (headers, notes)
 * are skipped; a "Datacenter: X" header sets the data center of the rows that follow.
 */
export function parseNodetoolStatus(output: string): RingView {
  const view = new Map<string, RingMember>();
  let datacenter = '';
  for (const raw of output.split('\n')) {
    const line = raw.trim();
    const dc = /^Datacenter:\s*(\S+)/.exec(line);
    if (dc) {
      datacenter = dc[1] ?? '';
      continue;
    }
    const m = STATUS_LINE.exec(line);
    if (!m) continue;
    const [, status, state, address, hostId, rack] = m;
    view.set(address!, {
      address: address!,
      status: status as NodeStatus,
      state: state as NodeState,
      hostId: hostId!,
      rack: rack!,
      datacenter,
    });
  }
  if (view.size === 0) {
    throw new InvalidArgumentError(`nodetool status printed no node rows:\n${output.slice(0, 2000)}`);
  }
  return view;
}

/** Parses `nodetool getendpoints` output: one address per line. */
export function parseEndpoints(output: string): string[] {
  return output
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /^\d+\.\d+\.\d+\.\d+$/.test(l));
}
