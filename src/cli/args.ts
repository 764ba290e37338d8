import { InvalidArgumentError } from '../util/errors.ts';

/** Parsed command-line arguments: positionals, and --flag / --flag=value / --flag value options. */
export interface ParsedArgs {
  positionals: string[];
  flags: Map<string, string | true>;
}

export interface FlagSpec {
  /** Whether the flag takes a value (--name value). */
  value: boolean;
  description: string;
}

/** Parses argv against the flags a command accepts; an unknown flag is an error naming it. */
export function parseArgs(argv: readonly string[], spec: Readonly<Record<string, FlagSpec>>): ParsedArgs {
  const positionals: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--')) {
      positionals.push(arg);
      continue;
    }
    const [name, inline] = arg.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    const flag = spec[name];
    if (!flag) {
      const known = Object.keys(spec).map((k) => `--${k}`).join(', ');
      throw new InvalidArgumentError(`unknown option --${name}${known ? ` (known: ${known})` : ''}`);
    }
    if (!flag.value) {
      if (inline !== undefined) throw new InvalidArgumentError(`--${name} takes no value`);
      flags.set(name, true);
      continue;
    }
    const value = inline ?? argv[++i];
    if (value === undefined) throw new InvalidArgumentError(`--${name} needs a value`);
    flags.set(name, value);
  }
  return { positionals, flags };
}

export function stringFlag(args: ParsedArgs, name: string, fallback: string): string {
  const v = args.flags.get(name);
  return typeof v === 'string' ? v : fallback;
}

export function intFlag(args: ParsedArgs, name: string, fallback: number, min: number, max: number): number {
  const v = args.flags.get(name);
  if (typeof v !== 'string') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new InvalidArgumentError(`--${name} must be an integer from ${min} to ${max}, got "${v}"`);
  }
  return n;
}
