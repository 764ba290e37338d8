// Starts a testbed in a separate process and then just waits: the lifecycle test SIGKILLs this process to
// leave behind exactly what a crashed test run leaves (a live JVM and a run directory with no owner).
import { Testbed } from '../../testcontainers/testbed.ts';
import { localRing } from './testbed.ts';

const [name, subnet] = process.argv.slice(2);
const testbed = await Testbed.start({ name: name!, subnet: Number(subnet), hosts: 1, heapMiB: 256 });
process.stdout.write(`READY ${localRing(testbed).livePids().map(([, pid]) => pid).join(',')}\n`);
setInterval(() => undefined, 60_000);
