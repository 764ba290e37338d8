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

/** The transport-security options every gRPC-speaking command takes. */
export const TLS_FLAGS = {
  'tls-ca': { value: true, description: 'PEM file of the cluster CA (mutual TLS)' },
  'tls-cert': { value: true, description: 'PEM certificate signed by that CA' },
  'tls-key': { value: true, description: 'PEM private key of that certificate' },
  insecure: { value: false, description: 'plaintext gRPC instead of TLS: for a local testbed only' },
} as const;

/** What TLS_FLAGS say, for transportSecurityFromFlags. */
export function tlsFlags(args: ParsedArgs): { ca?: string; cert?: string; key?: string; insecure: boolean } {
  const get = (name: string) => stringFlag(args, name, '') || undefined;
  return { ca: get('tls-ca'), cert: get('tls-cert'), key: get('tls-key'), insecure: args.flags.get('insecure') === true };
}

/** "30m", "24h", "7d" in ms. */
export function parseDuration(flag: string, text: string): number {
  const match = /^(\d+)([smhd])$/.exec(text);
  if (!match) throw new InvalidArgumentError(`--${flag} must be a number with s, m, h or d (e.g. 30m, 24h, 7d), got "${text}"`);
  return Number(match[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2] as 's' | 'm' | 'h' | 'd'];
}
