import { ConfigError, loadAgentFileConfig } from '../../config/load.ts';
import { DEFAULT_CONFIG_FILE } from '../../config/schema.ts';
import { InvalidArgumentError } from '../../util/errors.ts';
import { parseArgs } from '../args.ts';
import { ExitCode, type Command } from '../command.ts';

const FLAGS = {
  env: { value: false, description: 'also apply the LXCR_* environment overrides, as the agent started from this shell would' },
} as const;

/**
 * `lxcr config check [FILE]`: validates an agent config file without starting anything, and reports every
 * problem with its key path. It exits 0 ("FILE: valid") or 2 with the report, so it can serve as the
 * `validate:` of the template task that writes the file (`lxcr config check %s`).
 */
export const configCommand: Command = {
  name: 'config',
  summary: 'check an agent config file: every error with its key path (exit 2), or "valid"',
  usage: `check [FILE (default ${DEFAULT_CONFIG_FILE})] [--env]`,
  flags: FLAGS,
  run(argv) {
    const args = parseArgs(argv, FLAGS);
    const [action, file = DEFAULT_CONFIG_FILE, ...extra] = args.positionals;
    if (action !== 'check') throw new InvalidArgumentError(`config needs an action: check${action ? ` (got "${action}")` : ''}`);
    if (extra.length > 0) throw new InvalidArgumentError(`config check takes one file, got also "${extra.join(' ')}"`);
    try {
      loadAgentFileConfig({ file, env: args.flags.has('env') ? process.env : undefined });
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      process.stderr.write(`lxcr config: ${err.message}\n`);
      return Promise.resolve(ExitCode.USAGE);
    }
    process.stdout.write(`${file}: valid\n`);
    return Promise.resolve(ExitCode.OK);
  },
};
