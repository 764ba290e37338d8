import { formatRing } from '../../cluster/ring.ts';
import { InvalidArgumentError } from '../../util/errors.ts';
import { Testbed, testbedRoot, cleanupLeftovers } from '../../../testcontainers/testbed.ts';
import { createLogger } from '../../util/log.ts';
import { intFlag, parseArgs, stringFlag } from '../args.ts';
import { ExitCode, type Command } from '../command.ts';
import { untilTerminated } from '../signals.ts';

const FLAGS = {
  name: { value: true, description: 'testbed name (default "default")' },
  hosts: { value: true, description: 'number of simulated hosts for `up` (default 3)' },
  subnet: { value: true, description: 'hosts get 127.0.SUBNET.i (default 10)' },
} as const;

/**
 * `lxcr testbed up|down|status`: the local multi-host testbed by hand. `up` stays in the foreground and tears
 * everything down on Ctrl-C, so a testbed never outlives the command that owns it; `down` removes a testbed
 * (also one left by a crashed run).
 */
export const testbedCommand: Command = {
  name: 'testbed',
  summary: 'start (up), inspect (status) or remove (down) the local multi-host testbed',
  usage: 'up|status|down [--name NAME] [--hosts N] [--subnet S]',
  flags: FLAGS,
  async run(argv) {
    const args = parseArgs(argv, FLAGS);
    const [action] = args.positionals;
    const name = stringFlag(args, 'name', 'default');
    const logger = createLogger('testbed');
    switch (action) {
      case 'up': {
        const testbed = await Testbed.start({
          name,
          hosts: intFlag(args, 'hosts', 3, 1, 15),
          subnet: intFlag(args, 'subnet', Number(process.env.LXCR_TESTBED_SUBNET ?? 10), 0, 255),
          logger,
        });
        process.stdout.write(`${formatRing(await testbed.ring.ringView())}\n\nTestbed "${name}" is up; Ctrl-C tears it down.\n`);
        await untilTerminated();
        await testbed.teardown();
        return ExitCode.OK;
      }
      case 'status': {
        const testbed = Testbed.attach(name, { logger });
        process.stdout.write(`${formatRing(await testbed.ring.ringView())}\n`);
        return ExitCode.OK;
      }
      case 'down': {
        const cleaned = await cleanupLeftovers(testbedRoot(), logger);
        try {
          await Testbed.attach(name, { logger }).teardown();
          cleaned.push(name);
        } catch {
          // Not running (or already cleaned as a leftover).
        }
        process.stdout.write(cleaned.length > 0 ? `removed: ${cleaned.join(', ')}\n` : 'no testbed to remove\n');
        return ExitCode.OK;
      }
      default:
        throw new InvalidArgumentError(`testbed needs an action: up, status or down${action ? ` (got "${action}")` : ''}`);
    }
  },
};
