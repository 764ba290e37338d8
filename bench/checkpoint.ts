// npm run bench:checkpoint — checkpoint cost on the real testbed (3 Cassandra nodes, LXC, CRIU), with its
// baselines measured in the same run: a raw lxc-checkpoint dump and restore to local disk, and the same bytes
// written to the same keyspace by a bare driver loop. Sizes from LXCR_BENCH_SIZES (MiB, default 64,256,1024).
// Prints a table per size and, last, one JSON line with the ratios for the largest size. Freeze and raw dump
// times are medians of several dumps each, taken alternately (every checkpoint dumps the whole container).
// Upload throughput is sampled in five adjacent pairs, ours and the bare loop's, alternating which goes first
// (ours, loop, loop, ours, ...), each upload on a quiet ring (memtables flushed, no compaction pending). The upload
// ratio is the median of the five pairs' ratios: the host's CPU changes under us by up to 2x within a minute, and
// the two uploads of a pair see about the same machine where the medians of each side may not (see README).
// Automatic compaction is off in the bench keyspace: throttled to 16 MB/s, the compactions of a few GiB took minutes
// to finish, and whichever upload overlapped more of them paid for them; both sides' flushes still count.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import cassandra from 'cassandra-driver';
import { checkpointToStore, discardStaged, dumpToStaging, replicateStaged, restoreFromStore, type CheckpointToStoreResult } from '../src/checkpoint/procedures.ts';
import { CassandraSnapshotStore } from '../src/storage/cassandra-store.ts';
import { CompressionPolicy } from '../src/storage/codec.ts';
import { mapBounded } from '../src/util/concurrency.ts';
import { run } from '../src/util/exec.ts';
import { createLogger } from '../src/util/log.ts';
import { createCounterContainer, dirtyMemory, runtimeFor, startContainer, waitRunning } from '../testcontainers/lxc.ts';
import { LocalCassandraRing } from '../testcontainers/cassandra.ts';
import { Testbed } from '../testcontainers/testbed.ts';
import { connectBenchClient, log, median, round } from './support.ts';

const MiB = 1024 * 1024;
const KEYSPACE = 'lxcr_bench';
const CONCURRENCY = 4;
/** Dumps timed per size, ours and raw ones alternately; the freeze ratio compares their medians. */
const DUMP_SAMPLES = 7;
const QUIESCE_TIMEOUT_MS = 120_000;
/**
 * Which upload runs when: adjacent pairs (samples 2k and 2k+1), ours first in every other pair, so neither side
 * always meets the machine first. Ours come first in the order given.
 */
const UPLOAD_ORDER = ['ours', 'loop', 'loop', 'ours', 'ours', 'loop', 'loop', 'ours', 'ours', 'loop'] as const;
const sizes = (process.env.LXCR_BENCH_SIZES ?? '64,256,1024').split(',').map(Number);
const mibps = (bytes: number, ms: number) => bytes / MiB / (ms / 1000);

interface SizeResult {
  sizeMiB: number;
  /** Medians of several dumps each, raw and ours alternately: one dump's time varies by up to 30% here. */
  rawDumpMs: number;
  rawDumpSamplesMs: number[];
  rawRestoreMs: number;
  imageMiB: number;
  freezeMs: number;
  freezeSamplesMs: number[];
  /** Our first checkpoint's upload (the one the incremental checkpoint follows). */
  uploadMs: number;
  uploadedMiB: number;
  /** Medians of the upload samples, ours and the loop's. */
  uploadMiBps: number;
  bareLoopMiBps: number;
  /** Ours / the loop's rate in each adjacent pair of samples, in the order taken; the upload ratio is their median. */
  pairedUploadRatios: number[];
  uploadSamples: UploadSample[];
  durableMs: number;
  compression: Record<string, number>;
  incrementalUploadedMiB: number;
  restoreFromStoreMs: number;
  /** Its parts: download (read, verify, write the files), import (config and rootfs in place), lxc-checkpoint -r. */
  restorePhasesMs: { download: number; import: number; restore: number };
  /** Resident set size of this process before our first checkpoint, and its peak while it ran (dump + upload). */
  rssBeforeUploadMiB: number;
  uploadPeakRssMiB: number;
}

/** One measured upload: MiB/s, and the CPU-s per GiB this process and each Cassandra JVM spent on it. */
interface UploadSample {
  kind: (typeof UPLOAD_ORDER)[number];
  mibps: number;
  cpu: { self: number; jvms: number[] };
}

/**
 * Samples this process's RSS every few ms while `task` runs and returns the peak: what the upload really held
 * (VmHWM would be the peak of the whole process's life, earlier sizes included).
 */
async function peakRss<T>(task: () => Promise<T>): Promise<{ result: T; peakBytes: number }> {
  let peakBytes = process.memoryUsage.rss();
  const timer = setInterval(() => {
    peakBytes = Math.max(peakBytes, process.memoryUsage.rss());
  }, 10);
  try {
    const result = await task();
    peakBytes = Math.max(peakBytes, process.memoryUsage.rss());
    return { result, peakBytes };
  } finally {
    clearInterval(timer);
  }
}

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat; 0 once it is gone. */
function cpuSeconds(pid: number | 'self'): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

/**
 * CPU seconds per GiB that this process and each local Cassandra JVM spent while `task` ran: on a machine where
 * the JVMs share the cores with the agent, CPU, not the network, sets the upload rate, so this says where it went.
 */
async function cpuPerGiB<T>(testbed: Testbed, bytes: (result: T) => number, task: () => Promise<T>): Promise<{ result: T; self: number; jvms: number[] }> {
  const pids = testbed.ring instanceof LocalCassandraRing ? testbed.ring.livePids().map(([, pid]) => pid) : [];
  const before = { self: cpuSeconds('self'), jvms: pids.map(cpuSeconds) };
  const result = await task();
  const gib = bytes(result) / 1024 / MiB;
  return {
    result,
    self: (cpuSeconds('self') - before.self) / gib,
    jvms: pids.map((pid, i) => (cpuSeconds(pid) - before.jvms[i]!) / gib),
  };
}

/**
 * Flushes every node's memtables and waits until no compaction is pending: each measured upload (ours and the
 * bare loop's) starts on a quiet ring instead of paying for the flushes of what was written before it. (Automatic
 * compaction is off in the bench keyspace, see main; the wait covers the system keyspaces.)
 */
async function quiesceRing(testbed: Testbed): Promise<void> {
  const { ring } = testbed;
  await Promise.all(ring.nodes.map((n) => ring.nodetool(n.index, ['flush'])));
  const deadline = Date.now() + QUIESCE_TIMEOUT_MS;
  for (;;) {
    const stats = await Promise.all(ring.nodes.map((n) => ring.nodetool(n.index, ['compactionstats'])));
    if (stats.every((output) => /pending tasks: 0\b/.test(output))) return;
    if (Date.now() > deadline) {
      log(`compactions still pending after ${QUIESCE_TIMEOUT_MS / 1000} s; measuring anyway`);
      return;
    }
    await new Promise((wait) => setTimeout(wait, 1000));
  }
}

/**
 * Writes dirty pages back (sync(1)) before a timed dump, raw or ours: after gigabytes written by the ring and by
 * earlier dumps, a 1 GiB dump's own writes queued behind that writeback and took 1.8-3.3 s instead of 0.5-0.7.
 */
async function settleDisk(): Promise<void> {
  await run('sync', [], { timeoutMs: 300_000 });
}

/** The baseline: the same number of bytes as 1 MiB blobs, at the same consistency and concurrency, in partition `key`. */
async function bareLoop(client: cassandra.Client, key: string, bytes: number): Promise<number> {
  const blobs = Math.max(1, Math.round(bytes / MiB));
  const payloads = Array.from({ length: Math.min(blobs, 8) }, () => randomBytes(MiB));
  const started = performance.now();
  await mapBounded(Array.from({ length: blobs }, (_, i) => i), CONCURRENCY, async (i) => {
    await client.execute(`INSERT INTO ${KEYSPACE}.bare (k, i, v) VALUES (?, ?, ?)`, [key, i, payloads[i % payloads.length]], {
      prepare: true,
      consistency: cassandra.types.consistencies.two,
    });
  });
  return mibps(blobs * MiB, performance.now() - started);
}

/** Ours / the loop's MiB/s in each adjacent pair of samples (UPLOAD_ORDER holds one of each per pair). */
function pairedRatios(samples: readonly UploadSample[]): number[] {
  const ratios: number[] = [];
  for (let i = 0; i + 1 < samples.length; i += 2) {
    const pair = [samples[i]!, samples[i + 1]!];
    const ours = pair.find((sample) => sample.kind === 'ours');
    const loop = pair.find((sample) => sample.kind === 'loop');
    if (!ours || !loop) throw new Error(`UPLOAD_ORDER's pair ${i / 2} is not one upload of ours and one of the loop`);
    ratios.push(ours.mibps / loop.mibps);
  }
  return ratios;
}

async function benchSize(testbed: Testbed, client: cassandra.Client, store: CassandraSnapshotStore, sizeMiB: number, staging: string): Promise<SizeResult> {
  const host = testbed.host(1);
  const runtime = runtimeFor(host);
  const name = `bench-${sizeMiB}`;
  await createCounterContainer(host, name, { memoryMiB: sizeMiB });
  await startContainer(host, name);
  await waitRunning(host, name, 120_000);

  // Baseline: raw dumps to local disk the way ours runs (the container keeps running), taken between our
  // checkpoints so both see the same machine (a 1 GiB dump's time drifts by up to 30% over a minute here). Raw:
  // a plain lxc-checkpoint, without our copy of the open files during the freeze (which our freeze time includes).
  const rawDumpMs: number[] = [];
  let rawImageBytes = 0;
  const rawDir = join(staging, `${name}-raw`);
  const rawDump = async () => {
    await settleDisk();
    const dump = await runtime.checkpoint(name, rawDir, { stop: false, captureOpenFiles: false });
    rawDumpMs.push(dump.dumpMs);
    rawImageBytes = dump.imageBytes;
    rmSync(rawDir, { recursive: true, force: true });
  };
  const policy = new CompressionPolicy();
  const ours = async () => {
    await settleDisk();
    return checkpointToStore({ runtime, store, policy, container: name, sourceHost: host.hostId, stagingDir: staging });
  };

  await rawDump();
  const rssBeforeUpload = process.memoryUsage.rss();
  let uploadPeakRss = 0;
  let first: CheckpointToStoreResult | undefined;
  const uploadSamples: UploadSample[] = [];
  for (const kind of UPLOAD_ORDER) {
    await quiesceRing(testbed);
    if (kind === 'loop') {
      const bytes = first!.uploadedBytes;
      const { result: loopMiBps, ...cpu } = await cpuPerGiB(testbed, () => bytes, () => bareLoop(client, `${name}-${uploadSamples.length}`, bytes));
      uploadSamples.push({ kind, mibps: loopMiBps, cpu });
    } else if (!first) {
      // Our first checkpoint, as the agent takes it: dump, then upload into the container's own versions.
      const { result: { result, peakBytes }, ...cpu } = await cpuPerGiB(testbed, (r) => r.result.uploadedBytes, () => peakRss(ours));
      first = result;
      uploadPeakRss = peakBytes;
      uploadSamples.push({ kind, mibps: mibps(result.uploadedBytes, result.uploadMs), cpu });
    } else {
      // One more full upload of a fresh dump, stored as another container's so that nothing of it is deduplicated.
      const staged = await dumpToStaging({ runtime, container: name, stagingDir: staging });
      try {
        const relabeled = { ...staged, container: `${name}-upload-${uploadSamples.length}` };
        const { result, ...cpu } = await cpuPerGiB(testbed, (r) => r.uploadedBytes, () => replicateStaged(relabeled, { store, policy, sourceHost: host.hostId }));
        uploadSamples.push({ kind, mibps: mibps(result.uploadedBytes, result.uploadMs), cpu });
      } finally {
        await discardStaged(staged);
      }
    }
  }
  if (!first) throw new Error('UPLOAD_ORDER has no upload of ours');
  const samplesOf = (kind: UploadSample['kind']) => uploadSamples.filter((sample) => sample.kind === kind).map((sample) => sample.mibps);

  await rawDump();
  await dirtyMemory(host, name, Math.max(1, Math.round(sizeMiB / 10)));
  const second = await ours();
  // Every checkpoint dumps the whole container, so each one's freeze is a sample of the same quantity.
  const freezeMs = [first.dumpMs, second.dumpMs];
  while (freezeMs.length < DUMP_SAMPLES) {
    await rawDump();
    freezeMs.push((await ours()).dumpMs);
  }

  // The raw restore: the container killed and restored from one more raw dump's images on the same host. That
  // dump is paired with none of ours: it is not a freeze-time sample.
  await runtime.checkpoint(name, rawDir, { stop: false, captureOpenFiles: false });
  await runtime.stop(name, { kill: true });
  const rawRestore = await runtime.restore(name, rawDir);
  rmSync(rawDir, { recursive: true, force: true });

  await runtime.stop(name, { kill: true });
  await runtime.destroy(name);
  const restoreStarted = performance.now();
  const restored = await restoreFromStore({ runtime, store, container: name, stagingDir: staging });
  const restoreFromStoreMs = performance.now() - restoreStarted;
  await runtime.stop(name, { kill: true });
  await runtime.destroy(name);

  return {
    sizeMiB,
    rawDumpMs: median(rawDumpMs),
    rawDumpSamplesMs: rawDumpMs,
    rawRestoreMs: rawRestore.restoreMs,
    imageMiB: rawImageBytes / MiB,
    freezeMs: median(freezeMs),
    freezeSamplesMs: freezeMs,
    uploadMs: first.uploadMs,
    uploadedMiB: first.uploadedBytes / MiB,
    uploadMiBps: median(samplesOf('ours')),
    bareLoopMiBps: median(samplesOf('loop')),
    pairedUploadRatios: pairedRatios(uploadSamples),
    uploadSamples,
    durableMs: first.dumpMs + first.uploadMs,
    compression: first.manifest.compression.reasons,
    incrementalUploadedMiB: second.uploadedBytes / MiB,
    restoreFromStoreMs,
    restorePhasesMs: { download: restored.downloadMs, import: restored.importMs, restore: restored.restoreMs },
    rssBeforeUploadMiB: rssBeforeUpload / MiB,
    uploadPeakRssMiB: uploadPeakRss / MiB,
  };
}


const cpuLine = ({ self, jvms }: { self: number; jvms: number[] }) =>
  `${round(self)}; ${jvms.map((j) => round(j)).join(' + ')} = ${round(jvms.reduce((a, b) => a + b, 0))}`;

async function main(): Promise<void> {
  const staging = mkdtempSync('/var/tmp/lxcr-bench-');
  const testbed = await Testbed.start({ name: 'bench', subnet: 30, hosts: 3, logger: createLogger('bench', 'warn') });
  let client: cassandra.Client | undefined;
  const results: SizeResult[] = [];
  try {
    client = await connectBenchClient(testbed, 60_000);
    const store = new CassandraSnapshotStore({ client, keyspace: KEYSPACE });
    await store.ensureSchema();
    await client.execute(`CREATE TABLE IF NOT EXISTS ${KEYSPACE}.bare (k text, i int, v blob, PRIMARY KEY (k, i))`);
    await testbed.ring.waitSchemaAgreement();
    await Promise.all(testbed.ring.nodes.map((n) => testbed.ring.nodetool(n.index, ['disableautocompaction', KEYSPACE])));
    for (const size of sizes) {
      log(`--- ${size} MiB container`);
      const r = await benchSize(testbed, client, store, size, staging);
      results.push(r);
      log(
        [
          `raw lxc-checkpoint: dump ${round(r.rawDumpMs)} ms (median of ${r.rawDumpSamplesMs.map((v) => round(v)).join(', ')}; ${round(r.imageMiB)} MiB of images), restore ${round(r.rawRestoreMs)} ms`,
          `checkpoint: frozen ${round(r.freezeMs)} ms (median of ${r.freezeSamplesMs.map((v) => round(v)).join(', ')}), uploaded ${round(r.uploadedMiB)} MiB in ${round(r.uploadMs)} ms, durable after ${round(r.durableMs)} ms`,
          `upload: ours / bare driver loop in each adjacent pair ${r.pairedUploadRatios.map((v) => round(v, 3)).join(', ')}, median ${round(median(r.pairedUploadRatios), 3)}; ` +
            `MiB/s medians: ours ${round(r.uploadMiBps)}, loop ${round(r.bareLoopMiBps)} (ratio ${round(r.uploadMiBps / r.bareLoopMiBps, 3)}); samples in the order taken, with CPU-s per GiB (this process; each JVM = sum):`,
          ...r.uploadSamples.map((sample) => `  ${sample.kind} ${round(sample.mibps)} MiB/s, CPU ${cpuLine(sample.cpu)}`),
          `compression decisions: ${JSON.stringify(r.compression)}`,
          `peak RSS of this process during the checkpoint: ${round(r.uploadPeakRssMiB, 1)} MiB (${round(r.rssBeforeUploadMiB, 1)} MiB before it; the dump is streamed, never held whole)`,
          `second checkpoint after ~10% of memory changed: uploaded ${round(r.incrementalUploadedMiB)} MiB`,
          `restore from Cassandra: ${round(r.restoreFromStoreMs)} ms (download and verify ${round(r.restorePhasesMs.download)}, ` +
            `import config and rootfs ${round(r.restorePhasesMs.import)}, lxc-checkpoint -r ${round(r.restorePhasesMs.restore)})`,
        ].join('\n'),
      );
    }
  } finally {
    await client?.shutdown();
    await testbed.teardown();
    rmSync(staging, { recursive: true, force: true });
  }
  const largest = results.at(-1)!;
  const summary: Record<string, number> = {
    size_mib: largest.sizeMiB,
    freeze_ratio: round(largest.freezeMs / largest.rawDumpMs, 3),
    upload_ratio: round(median(largest.pairedUploadRatios), 3),
    upload_ratio_of_medians: round(largest.uploadMiBps / largest.bareLoopMiBps, 3),
    incremental_upload_ratio: round(largest.incrementalUploadedMiB / largest.uploadedMiB, 3),
    restore_ratio: round(largest.restoreFromStoreMs / largest.rawRestoreMs, 3),
  };
  for (const r of results) {
    summary[`upload_mibps_${r.sizeMiB}`] = round(r.uploadMiBps);
    summary[`upload_ratio_${r.sizeMiB}`] = round(median(r.pairedUploadRatios), 3);
    summary[`upload_ratio_of_medians_${r.sizeMiB}`] = round(r.uploadMiBps / r.bareLoopMiBps, 3);
    summary[`bare_loop_mibps_${r.sizeMiB}`] = round(r.bareLoopMiBps);
    summary[`freeze_ms_${r.sizeMiB}`] = round(r.freezeMs);
    summary[`raw_dump_ms_${r.sizeMiB}`] = round(r.rawDumpMs);
    summary[`durable_ms_${r.sizeMiB}`] = round(r.durableMs);
    summary[`restore_from_store_ms_${r.sizeMiB}`] = round(r.restoreFromStoreMs);
    summary[`restore_download_ms_${r.sizeMiB}`] = round(r.restorePhasesMs.download);
    summary[`raw_restore_ms_${r.sizeMiB}`] = round(r.rawRestoreMs);
    summary[`incremental_upload_ratio_${r.sizeMiB}`] = round(r.incrementalUploadedMiB / r.uploadedMiB, 3);
    summary[`upload_peak_rss_mib_${r.sizeMiB}`] = round(r.uploadPeakRssMiB, 1);
  }
  process.stdout.write(`${JSON.stringify(summary)}\n`);
}

await main();
