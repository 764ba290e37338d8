import { accessSync, constants, statSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { parseListenAddress } from '../util/address.ts';
import { errorMessage } from '../util/errors.ts';

/**
 * The kinds of value a config key holds. Each parses a value as it came from the JSON file, or as text (an
 * environment variable or a command-line flag), and says what is wrong with it in words an operator can act on.
 * A kind never throws: validation collects every problem of every key before it reports.
 */

export type Parsed<T> = { value: T } | { problem: string };

export interface FieldKind<T> {
  /** What the value must be, for messages and the README ("an integer from 1 to 1000"). */
  expected: string;
  fromJson(raw: unknown): Parsed<T>;
  fromText(text: string): Parsed<T>;
}

/** What a validator that throws (the ones the rest of the code uses) says about a value, if anything. */
export function problemOf(check: () => void): string | undefined {
  try {
    check();
    return undefined;
  } catch (err) {
    return errorMessage(err);
  }
}

function shown(raw: unknown): string {
  return JSON.stringify(raw) ?? String(raw);
}

/** A kind restricted by a further check of the parsed value. */
export function checked<T>(kind: FieldKind<T>, check: (value: T) => string | undefined, expected = kind.expected): FieldKind<T> {
  const then = (parsed: Parsed<T>): Parsed<T> => {
    if ('problem' in parsed) return parsed;
    const problem = check(parsed.value);
    return problem === undefined ? parsed : { problem };
  };
  return { expected, fromJson: (raw) => then(kind.fromJson(raw)), fromText: (text) => then(kind.fromText(text)) };
}

export const text: FieldKind<string> = {
  expected: 'a non-empty string',
  fromJson: (raw) => (typeof raw === 'string' && raw !== '' ? { value: raw } : { problem: `must be a non-empty string, got ${shown(raw)}` }),
  fromText: (value) => (value !== '' ? { value } : { problem: 'must not be empty' }),
};

export function integer(min: number, max: number): FieldKind<number> {
  const expected = `an integer from ${min} to ${max}`;
  const inRange = (n: unknown, shownAs: string): Parsed<number> =>
    typeof n === 'number' && Number.isInteger(n) && n >= min && n <= max ? { value: n } : { problem: `must be ${expected}, got ${shownAs}` };
  return {
    expected,
    fromJson: (raw) => inRange(raw, shown(raw)),
    fromText: (value) => inRange(/^-?\d+$/.test(value.trim()) ? Number(value) : NaN, `"${value}"`),
  };
}

export const boolean: FieldKind<boolean> = {
  expected: 'true or false',
  fromJson: (raw) => (typeof raw === 'boolean' ? { value: raw } : { problem: `must be true or false, got ${shown(raw)}` }),
  fromText: (value) => (value === 'true' ? { value: true } : value === 'false' ? { value: false } : { problem: `must be true or false, got "${value}"` }),
};

/** A list of strings: a JSON array, or comma-separated text. */
export const textList: FieldKind<string[]> = {
  expected: 'a list of strings (comma-separated in the environment)',
  fromJson: (raw) =>
    Array.isArray(raw) && raw.every((item) => typeof item === 'string' && item !== '')
      ? { value: raw as string[] }
      : { problem: `must be an array of non-empty strings, got ${shown(raw)}` },
  fromText: (value) => ({ value: value.split(',').map((item) => item.trim()).filter(Boolean) }),
};

/** Names to positive integers: a JSON object, or `name=n,name=n` text. */
export function integerMap(min: number, max: number): FieldKind<Record<string, number>> {
  const each = integer(min, max);
  const expected = `an object of names to integers from ${min} to ${max} ("name=n,name=n" in the environment)`;
  const fromEntries = (entries: Array<[string, Parsed<number>]>): Parsed<Record<string, number>> => {
    if (entries.length === 0) return { problem: `must name at least one entry: ${expected}` };
    const map: Record<string, number> = {};
    for (const [name, parsed] of entries) {
      if ('problem' in parsed) return { problem: `${name}: ${parsed.problem}` };
      map[name] = parsed.value;
    }
    return { value: map };
  };
  return {
    expected,
    fromJson: (raw) =>
      typeof raw === 'object' && raw !== null && !Array.isArray(raw)
        ? fromEntries(Object.entries(raw).map(([name, n]) => [name, each.fromJson(n)]))
        : { problem: `must be ${expected}, got ${shown(raw)}` },
    fromText: (value) => {
      const pairs = value.split(',').map((pair) => pair.trim()).filter(Boolean);
      const bad = pairs.find((pair) => !/^[^=]+=[^=]+$/.test(pair));
      if (bad !== undefined) return { problem: `"${bad}" is not name=n` };
      return fromEntries(pairs.map((pair) => {
        const [name, n] = pair.split('=') as [string, string];
        return [name.trim(), each.fromText(n.trim())];
      }));
    },
  };
}

export const absolutePath = checked(text, (path) => (isAbsolute(path) ? undefined : `must be an absolute path, got "${path}"`), 'an absolute path');

/** A file the agent reads at start: it must exist and be readable now, or the agent could not start. */
export const readableFile = checked(
  absolutePath,
  (path) => {
    if (problemOf(() => accessSync(path, constants.R_OK)) !== undefined) return `cannot be read: ${path} does not exist or is not readable by this user`;
    return statSync(path).isFile() ? undefined : `${path} is not a file`;
  },
  'an absolute path to a readable file',
);

/** host:port to listen on, port 0 to 65535 (0: any free port); an IPv6 host in brackets. */
export const listenAddress = checked(text, (address) => problemOf(() => parseListenAddress(address, 'the address')), 'host:port');
