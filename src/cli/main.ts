import { InvalidArgumentError, LxcrError, errorMessage, isRefusal } from '../util/errors.ts';
import { ExitCode, helpText, type Command } from './command.ts';
import { agentCommand } from './commands/agent.ts';
import { auditCommand, cqlCommand } from './commands/audit.ts';
import { configCommand } from './commands/config.ts';
import { checkpointCommand, containersCommand, eventsCommand, migrateCommand, restoreCommand, snapshotsCommand, statusCommand } from './commands/cluster.ts';
import { demoCommand } from './commands/demo.ts';
import { schemaCommand } from './commands/schema.ts';
import { testbedCommand } from './commands/testbed.ts';

const COMMANDS: readonly Command[] = [agentCommand, configCommand, statusCommand, containersCommand, snapshotsCommand, checkpointCommand, migrateCommand, restoreCommand, eventsCommand, auditCommand, cqlCommand, schemaCommand, demoCommand, testbedCommand];

function overview(): string {
  const lines = COMMANDS.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`);
  return `lxcr — LXCloud-CR: decentralized checkpoint-restart for LXC containers\n\nUsage: lxcr <command> [options]\n\nCommands:\n${lines.join('\n')}\n\nRun \`lxcr <command> --help\` for a command's options.\n`;
}

/** Maps an error to the documented exit code. */
export function exitCodeFor(err: unknown): number {
  if (isRefusal(err)) return ExitCode.REFUSED;
  if (!(err instanceof LxcrError)) return ExitCode.FAILED;
  switch (err.code) {
    case 'INVALID_ARGUMENT':
      return ExitCode.USAGE;
    case 'TOOL_MISSING':
      return ExitCode.ENVIRONMENT;
    case 'TESTBED':
      return ExitCode.TESTBED;
    case 'UNAVAILABLE':
    case 'TIMEOUT':
      return ExitCode.UNAVAILABLE;
    case 'UNAUTHENTICATED':
      return ExitCode.UNAUTHENTICATED;
    default:
      return ExitCode.FAILED;
  }
}

export async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    process.stdout.write(overview());
    return name === undefined ? ExitCode.USAGE : ExitCode.OK;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    process.stderr.write(`lxcr: unknown command "${name}"\n\n${overview()}`);
    return ExitCode.USAGE;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(helpText(command));
    return ExitCode.OK;
  }
  try {
    return await command.run(rest);
  } catch (err) {
    process.stderr.write(`lxcr ${command.name}: ${errorMessage(err)}\n`);
    if (err instanceof InvalidArgumentError) process.stderr.write(`\n${helpText(command)}`);
    return exitCodeFor(err);
  }
}
