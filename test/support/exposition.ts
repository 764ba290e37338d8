/**
 * A strict reader of the Prometheus text exposition format (0.0.4), for tests: every sample must belong to a
 * family announced by `# HELP` and `# TYPE` before it, counters end in _total, histogram buckets are cumulative
 * and end with le="+Inf" equal to _count. Anything else is thrown with its line number.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  types: Map<string, string>;
  samples: Sample[];
  /** The value of the one sample with this name and these labels (exactly), or undefined. */
  value(name: string, labels?: Record<string, string>): number | undefined;
}

const HELP = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/;
const TYPE = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/;
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*)?\})? (-?[0-9.]+(?:e[+-]?[0-9]+)?|NaN|\+Inf|-Inf)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function family(name: string, types: Map<string, string>): string | undefined {
  if (types.has(name)) return name;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (name.endsWith(suffix) && types.get(name.slice(0, -suffix.length)) === 'histogram') return name.slice(0, -suffix.length);
  }
  return undefined;
}

export function parseExposition(text: string): Exposition {
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline');
  const helps = new Set<string>();
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  text.slice(0, -1).split('\n').forEach((line, i) => {
    const fail = (why: string) => {
      throw new Error(`line ${i + 1} "${line}": ${why}`);
    };
    let m: RegExpExecArray | null;
    if ((m = HELP.exec(line))) {
      if (helps.has(m[1]!)) fail('second HELP for this family');
      helps.add(m[1]!);
    } else if ((m = TYPE.exec(line))) {
      if (!helps.has(m[1]!)) fail('TYPE before HELP');
      if (types.has(m[1]!)) fail('second TYPE for this family');
      if (m[2] === 'counter' && !m[1]!.endsWith('_total')) fail('a counter\'s name must end in _total');
      types.set(m[1]!, m[2]!);
    } else if ((m = SAMPLE.exec(line))) {
      if (family(m[1]!, types) === undefined) fail('sample of a family without HELP and TYPE before it');
      const labels: Record<string, string> = {};
      for (const [, name, value] of (m[2] ?? '').matchAll(LABEL)) labels[name!] = value!.replace(/\\n/g, '\n').replace(/\\(.)/g, '$1');
      const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
      samples.push({ name: m[1]!, labels, value });
    } else {
      fail('neither HELP, TYPE nor a sample');
    }
  });
  checkHistograms(types, samples);
  const sameLabels = (a: Record<string, string>, b: Record<string, string>) =>
    Object.keys(a).length === Object.keys(b).length && Object.entries(b).every(([k, v]) => a[k] === v);
  return {
    types,
    samples,
    value: (name, labels = {}) => samples.find((s) => s.name === name && sameLabels(s.labels, labels))?.value,
  };
}

function checkHistograms(types: Map<string, string>, samples: Sample[]): void {
  for (const [name, type] of types) {
    if (type !== 'histogram') continue;
    const buckets = samples.filter((s) => s.name === `${name}_bucket`);
    const count = samples.find((s) => s.name === `${name}_count`);
    if (buckets.length === 0) continue;
    let previous = 0;
    for (const bucket of buckets) {
      if (bucket.value < previous) throw new Error(`histogram ${name}: bucket le=${bucket.labels['le']} is not cumulative`);
      previous = bucket.value;
    }
    const inf = buckets.at(-1)!;
    if (inf.labels['le'] !== '+Inf' || inf.value !== count?.value) throw new Error(`histogram ${name}: the last bucket must be le="+Inf" and equal _count`);
  }
}
