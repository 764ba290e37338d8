import type { FlagSpec } from './args.ts';

/** One `lxcr` subcommand. `run` returns the process exit code. */
export interface Command {
  name: string;
  summary: string;
  /** Usage line after `lxcr <name>`, e.g. "[--name NAME]". */
  usage: string;
  flags: Readonly<Record<string, FlagSpec>>;
  run(argv: readonly string[]): Promise<number>;
}

/** Exit codes, documented in the README. */
export const ExitCode = {
  OK: 0,
  FAILED: 1,
  USAGE: 2,
  ENVIRONMENT: 3,
  TESTBED: 4,
  /** The cluster refused the request as asked: no such container or version, or not in a state that allows it. */
  REFUSED: 5,
  /** The agent or Cassandra could not be reached, or did not answer in time. */
  UNAVAILABLE: 6,
  /** The agent asks for a bearer token and none or the wrong one was given (--token-file). */
  UNAUTHENTICATED: 7,
  INTERRUPTED: 130,
} as const;

export function helpText(command: Command): string {
  const flags = Object.entries(command.flags)
    .map(([name, f]) => `  --${name}${f.value ? ' VALUE' : ''}`.padEnd(26) + f.description)
    .join('\n');
  return `lxcr ${command.name} ${command.usage}\n\n${command.summary}\n${flags ? `\nOptions:\n${flags}\n` : ''}  --help                  show this help\n`;
}
