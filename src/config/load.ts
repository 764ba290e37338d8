import { readFileSync } from 'node:fs';
import { InvalidArgumentError, errorMessage } from '../util/errors.ts';
import { ALTERNATIVES, CONFIG_KEYS, OPTIONAL_SECTIONS, envName, type AgentFileConfig, type ConfigKey } from './schema.ts';

/**
 * Loading the agent's config: built-in defaults < the config file < the environment (LXCR_<KEY_PATH>) < the
 * command-line flags. Each source becomes a layer of settings by key path; the layers are merged, then every
 * key is parsed and checked, and every problem of every key is collected before anything is reported, each
 * line naming its key path (and the variable or flag when the value came from one).
 */

interface Setting {
  raw: unknown;
  /** The value is text to convert (environment, flags) rather than a JSON value. */
  fromText: boolean;
  /** Where a value that did not come from the file came from: `LXCR_KEEP`, `--keep`. */
  origin?: string;
}

interface Layer {
  settings: Map<string, Setting>;
  /** Sections the source gave, even empty: an empty optional section still needs its required keys. */
  sections: Set<string>;
}

const emptyLayer = (): Layer => ({ settings: new Map(), sections: new Set() });

/** Every problem of a configuration, one line each (`key.path: what is wrong, and what to do`). */
export class ConfigError extends InvalidArgumentError {
  constructor(
    /** What was read: the file, and the environment and flags when they were. */
    readonly source: string,
    readonly problems: readonly string[],
  ) {
    super(`invalid configuration (${source}), ${problems.length} error${problems.length === 1 ? '' : 's'}:\n${problems.join('\n')}`);
  }
}

const KEYS = new Map(CONFIG_KEYS.map((key) => [key.path, key]));

const under = (path: string, prefix: string) => path === prefix || path.startsWith(`${prefix}.`);

/** The keys directly inside a section ('' for the top level). */
function keysIn(section: string): string[] {
  const names = new Set<string>();
  for (const { path } of CONFIG_KEYS) {
    if (section === '' || path.startsWith(`${section}.`)) names.add(path.slice(section === '' ? 0 : section.length + 1).split('.')[0]!);
  }
  return [...names];
}

const isSection = (path: string) => CONFIG_KEYS.some((key) => key.path.startsWith(`${path}.`));

/** A known key one or two edits away from a typo, if there is one. */
function closest(name: string, known: readonly string[]): string | undefined {
  const distance = (a: string, b: string): number => {
    let row = Array.from({ length: b.length + 1 }, (_, i) => i);
    for (let i = 1; i <= a.length; i++) {
      const next = [i];
      for (let j = 1; j <= b.length; j++) next.push(Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1)));
      row = next;
    }
    return row[b.length]!;
  };
  return known.find((candidate) => distance(name, candidate) <= 2);
}

/** The file's settings by key path; unknown keys and misplaced sections are problems. */
function fileLayer(json: unknown, problems: string[]): Layer {
  const layer = emptyLayer();
  const walk = (node: unknown, section: string) => {
    if (typeof node !== 'object' || node === null || Array.isArray(node)) {
      problems.push(`${section}: must be an object with the keys ${keysIn(section).join(', ')}, got ${JSON.stringify(node)}`);
      return;
    }
    if (section !== '') layer.sections.add(section);
    for (const [name, value] of Object.entries(node)) {
      const path = section === '' ? name : `${section}.${name}`;
      if (KEYS.has(path)) layer.settings.set(path, { raw: value, fromText: false });
      else if (isSection(path)) walk(value, path);
      else {
        const known = keysIn(section);
        const guess = closest(name, known);
        problems.push(`${path}: unknown key${guess ? ` (did you mean ${section === '' ? guess : `${section}.${guess}`}?)` : ''}; the keys ${section === '' ? 'at the top level' : `of ${section}`} are ${known.join(', ')}`);
      }
    }
  };
  walk(json, '');
  return layer;
}

/** The JSON of a config file; a file that cannot be read or parsed is a problem naming the file (and where). */
function readJson(file: string, problems: string[]): unknown {
  let content: string;
  try {
    content = readFileSync(file, 'utf8');
  } catch (err) {
    problems.push(`${file}: cannot be read: ${errorMessage(err)}`);
    return undefined;
  }
  try {
    return JSON.parse(content) as unknown;
  } catch (err) {
    const position = /at position (\d+)/.exec(errorMessage(err));
    let where = '';
    if (position) {
      const before = content.slice(0, Number(position[1]));
      const line = before.split('\n').length;
      where = ` at line ${line}, column ${before.length - before.lastIndexOf('\n')}`;
    }
    const hint = /^\s*\/\//m.test(content) ? ' (comments are not allowed in JSON)' : '';
    problems.push(`${file}: not valid JSON${where}: ${errorMessage(err)}${hint}`);
    return undefined;
  }
}

/** The environment's overrides: LXCR_<KEY_PATH> for every key; an empty variable counts as unset. */
function envLayer(env: NodeJS.ProcessEnv): Layer {
  const layer = emptyLayer();
  for (const { path } of CONFIG_KEYS) {
    const value = env[envName(path)];
    if (value !== undefined && value !== '') layer.settings.set(path, { raw: value, fromText: true, origin: envName(path) });
  }
  return layer;
}

/** The `lxcr agent` flags' overrides, by the flag each key declares. */
function flagLayer(flags: ReadonlyMap<string, string | true>): Layer {
  const layer = emptyLayer();
  for (const { path, flag } of CONFIG_KEYS) {
    const given = flag && flags.get(flag.name);
    if (flag === undefined || given === undefined) continue;
    const origin = `--${flag.name}`;
    layer.settings.set(path, flag.value !== undefined ? { raw: flag.value, fromText: false, origin } : { raw: given, fromText: true, origin });
  }
  return layer;
}

/** Whether a source chooses an alternative: gives a key of it, other than a boolean false (false, or "false" as text). */
const chooses = (layer: Layer, alternative: string) =>
  [...layer.settings].some(([path, { raw }]) => under(path, alternative) && raw !== false && raw !== 'false') || layer.sections.has(alternative);

function merge(layers: readonly Layer[]): Layer {
  const merged = emptyLayer();
  for (const layer of layers) {
    // A source that chooses one alternative overrides a lower source's choice of the other.
    for (const { keys } of ALTERNATIVES) {
      for (const [mine, other] of [keys, [keys[1], keys[0]]] as const) {
        if (!chooses(layer, mine)) continue;
        for (const path of [...merged.settings.keys()]) if (under(path, other)) merged.settings.delete(path);
        for (const section of [...merged.sections]) if (under(section, other)) merged.sections.delete(section);
      }
    }
    for (const [path, setting] of layer.settings) merged.settings.set(path, setting);
    for (const section of layer.sections) merged.sections.add(section);
  }
  return merged;
}

/** How an operator sets a key: the file, its variable, its flag. */
function howToSet(key: ConfigKey): string {
  return `set ${key.path} in the config file, or ${envName(key.path)}${key.flag && key.flag.value === undefined ? `, or --${key.flag.name}` : ''}`;
}

function resolve(merged: Layer, problems: string[]): AgentFileConfig {
  const values = new Map<string, unknown>();
  for (const key of CONFIG_KEYS) {
    const { path } = key;
    const setting = merged.settings.get(path);
    if (setting === undefined) continue;
    const parsed = setting.fromText ? key.kind.fromText(String(setting.raw)) : key.kind.fromJson(setting.raw);
    if ('problem' in parsed) problems.push(`${path}: ${parsed.problem}${setting.origin ? ` (from ${setting.origin})` : ''}`);
    else values.set(path, parsed.value);
  }
  const given = (section: string) => merged.sections.has(section) || [...merged.settings.keys()].some((path) => under(path, section));
  for (const { keys: [a, b], oneRequired } of ALTERNATIVES) {
    const [chosenA, chosenB] = [chooses(merged, a), chooses(merged, b)];
    const parent = a.slice(0, a.lastIndexOf('.'));
    const name = (path: string) => path.slice(parent.length + 1);
    if (chosenA && chosenB) problems.push(`${parent}: ${name(a)} and ${name(b)} are alternatives; give one of them, not both`);
    if (!chosenA && !chosenB && oneRequired !== undefined) problems.push(`${parent}: ${oneRequired}`);
  }
  const chosenInstead = (path: string) => ALTERNATIVES.some(({ keys }) => keys.some((k, i) => under(path, k) && chooses(merged, keys[1 - i]!)));
  for (const key of CONFIG_KEYS) {
    if (merged.settings.has(key.path)) continue;
    const section = OPTIONAL_SECTIONS.find((s) => under(key.path, s));
    if (section !== undefined && !given(section)) continue;
    if (chosenInstead(key.path)) continue;
    if (key.required) {
      problems.push(`${key.path}: is required; ${howToSet(key)}`);
      continue;
    }
    const value = key.derivedDefault ? key.derivedDefault(values) : key.default;
    if (value !== undefined) values.set(key.path, value);
  }
  // Every section is there (schedule: {} when no schedule is set), except optional sections nobody gave.
  const config: Record<string, unknown> = {};
  for (const key of CONFIG_KEYS) {
    const section = OPTIONAL_SECTIONS.find((s) => under(key.path, s));
    if (section !== undefined && !values.has(key.path) && !given(section)) continue;
    const segments = key.path.split('.');
    let node = config;
    for (const segment of segments.slice(0, -1)) node = (node[segment] ??= {}) as Record<string, unknown>;
    if (values.has(key.path)) node[segments.at(-1)!] = values.get(key.path);
  }
  return config as unknown as AgentFileConfig;
}

export interface ConfigSources {
  /** The JSON config file, if one is used. */
  file?: string;
  /** The environment whose LXCR_* variables override the file; none when absent. */
  env?: NodeJS.ProcessEnv;
  /** `lxcr agent`'s parsed flags, which override everything. */
  flags?: ReadonlyMap<string, string | true>;
}

/** The agent's configuration from its sources, defaults filled in; a ConfigError lists every problem. */
export function loadAgentFileConfig(sources: ConfigSources): AgentFileConfig {
  const problems: string[] = [];
  const layers: Layer[] = [];
  if (sources.file !== undefined) {
    const json = readJson(sources.file, problems);
    // A file that cannot be read or parsed: every key would be reported missing, which says nothing more.
    if (json === undefined) throw new ConfigError(sources.file, problems);
    if (typeof json !== 'object' || json === null || Array.isArray(json)) {
      throw new ConfigError(sources.file, [`${sources.file}: must hold one JSON object with the keys ${keysIn('').join(', ')}, got ${JSON.stringify(json)}`]);
    }
    layers.push(fileLayer(json, problems));
  }
  if (sources.env) layers.push(envLayer(sources.env));
  if (sources.flags) layers.push(flagLayer(sources.flags));
  const config = resolve(merge(layers), problems);
  if (problems.length > 0) {
    const source = [sources.file, sources.env && 'environment', sources.flags && 'flags'].filter(Boolean).join(', ');
    throw new ConfigError(source || 'defaults only', problems);
  }
  return config;
}
