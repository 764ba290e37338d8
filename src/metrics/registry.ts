/**
 * A small metrics registry that renders the Prometheus text exposition format (version 0.0.4): counters, gauges
 * and histograms, each with a `# HELP` and `# TYPE` line and optional labels. Gauges may be read at scrape time
 * from a callback (queue depths, gossip state), so nothing has to push them. No dependency: the format is a few
 * lines of text, and the agent needs nothing else of a client library.
 */

export type Labels = Readonly<Record<string, string>>;

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** A label value as the format wants it: backslash, double quote and newline escaped. */
function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function escapeHelp(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function labelText(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return '';
  for (const [name] of entries) if (!LABEL_NAME.test(name)) throw new RangeError(`invalid metric label name "${name}"`);
  return `{${entries.map(([name, value]) => `${name}="${escapeLabelValue(value)}"`).join(',')}}`;
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

/** One time series per distinct label set, keyed by its rendered labels. */
class Series<T> {
  private readonly byKey = new Map<string, { labels: Labels; value: T }>();

  constructor(private readonly initial: () => T) {}

  get(labels: Labels): T {
    const key = labelText(labels);
    let entry = this.byKey.get(key);
    if (!entry) this.byKey.set(key, (entry = { labels, value: this.initial() }));
    return entry.value;
  }

  set(labels: Labels, value: T): void {
    this.byKey.set(labelText(labels), { labels, value });
  }

  entries(): Array<{ labels: Labels; value: T }> {
    return [...this.byKey.values()];
  }
}

interface Metric {
  readonly name: string;
  render(): string[];
}

abstract class Named implements Metric {
  constructor(
    readonly name: string,
    private readonly help: string,
    private readonly type: 'counter' | 'gauge' | 'histogram',
  ) {
    if (!METRIC_NAME.test(name)) throw new RangeError(`invalid metric name "${name}"`);
  }

  render(): string[] {
    return [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`, ...this.samples()];
  }

  protected abstract samples(): string[];
}

export class Counter extends Named {
  private readonly series = new Series(() => ({ total: 0 }));

  constructor(name: string, help: string) {
    if (!name.endsWith('_total')) throw new RangeError(`counter name "${name}" must end in _total`);
    super(name, help, 'counter');
  }

  inc(amount = 1, labels: Labels = {}): void {
    if (!(amount >= 0)) throw new RangeError(`counter ${this.name} can only go up, got ${amount}`);
    this.series.get(labels).total += amount;
  }

  protected samples(): string[] {
    return this.series.entries().map(({ labels, value }) => `${this.name}${labelText(labels)} ${formatValue(value.total)}`);
  }
}

/** A gauge set by its owner, or read at scrape time from `collect` (which returns every series). */
export class Gauge extends Named {
  private readonly series = new Series(() => 0);

  constructor(
    name: string,
    help: string,
    private readonly collect?: () => Iterable<{ labels?: Labels; value: number }>,
  ) {
    super(name, help, 'gauge');
  }

  set(value: number, labels: Labels = {}): void {
    this.series.set(labels, value);
  }

  protected samples(): string[] {
    const current = this.collect ? [...this.collect()].map((s) => ({ labels: s.labels ?? {}, value: s.value })) : this.series.entries();
    return current.map(({ labels, value }) => `${this.name}${labelText(labels)} ${formatValue(value)}`);
  }
}

/** Cumulative buckets (`le`), a `_sum` and a `_count`, as Prometheus expects of a histogram. */
export class Histogram extends Named {
  private readonly series: Series<{ counts: number[]; sum: number; count: number }>;

  constructor(
    name: string,
    help: string,
    private readonly buckets: readonly number[],
  ) {
    super(name, help, 'histogram');
    if (buckets.length === 0 || buckets.some((b, i) => i > 0 && b <= buckets[i - 1]!)) throw new RangeError(`histogram ${name} needs increasing buckets`);
    this.series = new Series(() => ({ counts: buckets.map(() => 0), sum: 0, count: 0 }));
  }

  observe(value: number, labels: Labels = {}): void {
    const s = this.series.get(labels);
    this.buckets.forEach((bound, i) => {
      if (value <= bound) s.counts[i]!++;
    });
    s.sum += value;
    s.count++;
  }

  protected samples(): string[] {
    const lines: string[] = [];
    for (const { labels, value } of this.series.entries()) {
      this.buckets.forEach((bound, i) => lines.push(`${this.name}_bucket${labelText({ ...labels, le: formatValue(bound) })} ${value.counts[i]}`));
      lines.push(`${this.name}_bucket${labelText({ ...labels, le: '+Inf' })} ${value.count}`);
      lines.push(`${this.name}_sum${labelText(labels)} ${formatValue(value.sum)}`);
      lines.push(`${this.name}_count${labelText(labels)} ${value.count}`);
    }
    return lines;
  }
}

export class MetricsRegistry {
  private readonly metrics = new Map<string, Metric>();

  register<M extends Metric>(metric: M): M {
    if (this.metrics.has(metric.name)) throw new RangeError(`metric ${metric.name} is registered twice`);
    this.metrics.set(metric.name, metric);
    return metric;
  }

  counter(name: string, help: string): Counter {
    return this.register(new Counter(name, help));
  }

  gauge(name: string, help: string, collect?: () => Iterable<{ labels?: Labels; value: number }>): Gauge {
    return this.register(new Gauge(name, help, collect));
  }

  histogram(name: string, help: string, buckets: readonly number[]): Histogram {
    return this.register(new Histogram(name, help, buckets));
  }

  /** The whole exposition, in registration order, ending with a newline. */
  render(): string {
    return `${[...this.metrics.values()].flatMap((m) => m.render()).join('\n')}\n`;
  }
}

/** The Content-Type of the text format. */
export const EXPOSITION_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
