import { InvalidArgumentError } from '../util/errors.ts';
import type { GossipView } from './gossip.ts';
import { JmxGossipView, type JmxGossipViewOptions } from './jmx-gossip.ts';
import { NodetoolGossipView, type NodetoolGossipViewOptions } from './nodetool-gossip.ts';

export type GossipViewKind = 'jmx' | 'nodetool';

export type GossipViewOptions =
  | ({ kind?: 'jmx' } & JmxGossipViewOptions)
  | ({ kind: 'nodetool' } & NodetoolGossipViewOptions);

/** The kind from LXCR_GOSSIP_VIEW: "jmx" (default) or "nodetool". */
export function gossipViewKindFromEnv(value = process.env.LXCR_GOSSIP_VIEW): GossipViewKind {
  if (value === undefined || value === '' || value === 'jmx') return 'jmx';
  if (value === 'nodetool') return 'nodetool';
  throw new InvalidArgumentError(`LXCR_GOSSIP_VIEW must be "jmx" (the default) or "nodetool", not "${value}"`);
}

/**
 * Starts the agent's gossip view of its local node: the long-lived JMX probe by default, or `nodetool status`
 * polling where the probe cannot run (no JDK to compile it once). Without an explicit `kind`, LXCR_GOSSIP_VIEW
 * decides; switched to nodetool that way, the view polls at nodetool's own default period, not the probe's.
 */
export async function startGossipView(options: GossipViewOptions): Promise<GossipView> {
  if (options.kind === 'nodetool') return new NodetoolGossipView(options);
  if (options.kind === undefined && gossipViewKindFromEnv() === 'nodetool') {
    return new NodetoolGossipView({ host: options.host, port: options.port, logger: options.logger });
  }
  return JmxGossipView.start(options);
}
