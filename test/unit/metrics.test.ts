import { describe, expect, it } from 'vitest';
import { AgentMetrics } from '../../src/metrics/agent-metrics.ts';
import { MetricsRegistry } from '../../src/metrics/registry.ts';
import { parseExposition } from '../support/exposition.ts';

describe('the metrics registry', () => {
  it('renders counters, gauges and cumulative histograms in the text format, labels escaped', () => {
    const registry = new MetricsRegistry();
    registry.counter('x_events_total', 'Events.').inc(2, { kind: 'a "quoted"\nkind' });
    registry.gauge('x_depth', 'Depth.').set(3);
    registry.gauge('x_up', 'Up.', () => [{ labels: { node: '127.0.0.1' }, value: 1 }]);
    const h = registry.histogram('x_seconds', 'Seconds.', [0.1, 1]);
    h.observe(0.05);
    h.observe(0.5);
    h.observe(5);
    const text = registry.render();
    expect(text).toContain('x_events_total{kind="a \\"quoted\\"\\nkind"} 2\n');
    expect(text).toContain('x_seconds_bucket{le="0.1"} 1\nx_seconds_bucket{le="1"} 2\nx_seconds_bucket{le="+Inf"} 3\nx_seconds_sum 5.55\nx_seconds_count 3\n');
    const parsed = parseExposition(text);
    expect(parsed.value('x_events_total', { kind: 'a "quoted"\nkind' })).toBe(2);
    expect(parsed.value('x_depth')).toBe(3);
    expect(parsed.value('x_up', { node: '127.0.0.1' })).toBe(1);
  });

  it('refuses names the format does not allow and counters that go down', () => {
    const registry = new MetricsRegistry();
    expect(() => registry.counter('x_events', 'no _total')).toThrow(/must end in _total/);
    expect(() => registry.gauge('x-bad', 'dash')).toThrow(/invalid metric name/);
    expect(() => registry.counter('x_total', 'c').inc(-1)).toThrow(/only go up/);
    registry.gauge('x_twice', 'once');
    expect(() => registry.gauge('x_twice', 'twice')).toThrow(/registered twice/);
  });

  it('turns audit events into the agent\'s metrics', () => {
    const metrics = new AgentMetrics({
      gossip: () => new Map([['127.0.0.1', { address: '127.0.0.1', status: 'U', state: 'N', hostId: 'h', rack: 'r', datacenter: 'd' }]]) as never,
      replicationQueue: () => 1, pendingCheckpoints: () => 2, restoresInFlight: () => 0, auditBacklog: () => 0,
    });
    metrics.observe({ kind: 'checkpoint-committed', host: 'h1', bytes: 1000, durationMs: 2000, checkpoint: { freezeMs: 50, logicalBytes: 4000, uploadMs: 500 } });
    metrics.observe({ kind: 'gc-collected', host: 'h1', bytes: 300 });
    metrics.observe({ kind: 'restore-done', host: 'h1', bytes: 4000, durationMs: 1500 });
    const parsed = parseExposition(metrics.registry.render());
    expect(parsed.value('lxcr_checkpoint_upload_bytes_total')).toBe(1000);
    expect(parsed.value('lxcr_checkpoint_dump_bytes_total')).toBe(4000);
    expect(parsed.value('lxcr_checkpoint_dedup_ratio')).toBe(4);
    expect(parsed.value('lxcr_checkpoint_upload_throughput_bytes_per_second')).toBe(8000);
    expect(parsed.value('lxcr_checkpoint_freeze_seconds_sum')).toBe(0.05);
    expect(parsed.value('lxcr_gc_freed_bytes_total')).toBe(300);
    expect(parsed.value('lxcr_restore_duration_seconds_count')).toBe(1);
    expect(parsed.value('lxcr_gossip_node_up', { node: '127.0.0.1' })).toBe(1);
    expect(parsed.value('lxcr_pending_checkpoints')).toBe(2);
    expect(parsed.value('lxcr_audit_events_total', { kind: 'checkpoint-committed' })).toBe(1);
  });
});
