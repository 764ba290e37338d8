import { join } from 'node:path';
import { formatRing } from '../../cluster/ring.ts';
import { createLogger } from '../../util/log.ts';
import {
  copyContainer,
  createCounterContainer,
  readCounter,
  runtimeFor,
  startContainer,
  waitForCounterAbove,
  waitRunning,
} from '../../../testcontainers/lxc.ts';
import { Testbed } from '../../../testcontainers/testbed.ts';
import { intFlag, parseArgs } from '../args.ts';
import { ExitCode, type Command } from '../command.ts';

const FLAGS = {
  subnet: { value: true, description: 'the demo hosts get 127.0.SUBNET.1-3 (default 20)' },
} as const;

const CONTAINER = 'demo-counter';

function step(text: string): void {
  process.stdout.write(`\n==> ${text}\n`);
}

function say(text: string): void {
  process.stdout.write(`    ${text}\n`);
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

/**
 * The end-to-end demo on the embedded default: a local 3-host testbed of real Cassandra nodes and real LXC
 * containers. It grows with the project; today it shows the ring, a checkpoint and a restore on another host
 * with the container's memory intact, and failure detection through gossip. Everything it starts is torn
 * down at the end, also on failure or Ctrl-C.
 */
export const demoCommand: Command = {
  name: 'demo',
  summary: 'run the end-to-end demo on a local 3-host testbed (real Cassandra, LXC and CRIU)',
  usage: '[--subnet S]',
  flags: FLAGS,
  async run(argv) {
    const args = parseArgs(argv, FLAGS);
    const subnet = intFlag(args, 'subnet', 20, 0, 255);
    const logger = createLogger('demo', process.env.LXCR_LOG_LEVEL === 'debug' ? 'debug' : 'warn');

    step(`Bringing up a local 3-host testbed: one real Cassandra 2.1 node per host on 127.0.${subnet}.1-3, each host with its own LXC lxcpath`);
    const started = Date.now();
    const testbed = await Testbed.start({ name: 'demo', hosts: 3, subnet, logger });
    let interrupted = false;
    const onSignal = () => {
      interrupted = true;
      process.stdout.write('\nInterrupted: tearing the testbed down.\n');
      void testbed.teardown().finally(() => process.exit(ExitCode.INTERRUPTED));
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      say(`ring ready in ${seconds(Date.now() - started)}; as node 1's gossip sees it:`);
      process.stdout.write(`${indent(formatRing(await testbed.ring.ringView(1)))}\n`);

      const [host1, host2] = [testbed.host(1), testbed.host(2)];
      step(`Starting container "${CONTAINER}" on ${host1.hostId}: busybox, counting in memory only (a restore that lost memory would start again at 1)`);
      await createCounterContainer(host1, CONTAINER);
      await startContainer(host1, CONTAINER);
      await waitRunning(host1, CONTAINER);
      const before = await waitForCounterAbove(host1, CONTAINER, 15);
      say(`counter on ${host1.hostId}: ${before}`);

      step(`Checkpointing it with lxc-checkpoint (CRIU), stopping it after the dump`);
      const imagesDir = join(testbed.runDir, 'images', CONTAINER);
      const dump = await runtimeFor(host1).checkpoint(CONTAINER, imagesDir, { stop: true });
      const atDump = await readCounter(host1, CONTAINER);
      say(`dumped in ${seconds(dump.dumpMs)}, ${(dump.imageBytes / 1024).toFixed(0)} KiB of CRIU images; counter at the dump: ${atDump}`);
      say(`state on ${host1.hostId} now: ${await runtimeFor(host1).state(CONTAINER)}`);

      step(`Restoring it on ${host2.hostId}: its config and rootfs copied into ${host2.hostId}'s lxcpath, then lxc-checkpoint -r`);
      await copyContainer(host1, host2, CONTAINER);
      await runtimeFor(host1).destroy(CONTAINER);
      const restore = await runtimeFor(host2).restore(CONTAINER, imagesDir);
      const after = await waitForCounterAbove(host2, CONTAINER, atDump + 5);
      say(`restored in ${seconds(restore.restoreMs)}; counter on ${host2.hostId}: ${after} (continued from ${atDump}, not from 1)`);

      step(`Killing host 3's Cassandra node (SIGKILL) and waiting for gossip to mark it down`);
      await testbed.ring.kill(3);
      const detectMs = await testbed.ring.waitStatus(3, 'D', 60_000, 1);
      say(`node 1 saw host 3 DN after ${seconds(detectMs)} (phi_convict_threshold 5):`);
      process.stdout.write(`${indent(formatRing(await testbed.ring.ringView(1)))}\n`);

      step('Tearing the testbed down (every JVM and container stopped by PID)');
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      if (!interrupted) await testbed.teardown();
    }
    say(`done in ${seconds(Date.now() - started)}`);
    return ExitCode.OK;
  },
};

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');
}
