/**
 * Waits for SIGINT or SIGTERM, keeping the process alive meanwhile: a foreground command whose own work holds
 * no timer or socket (e.g. `lxcr testbed up`, whose JVMs are separate processes) would otherwise exit at once.
 */
export function untilTerminated(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const keepAlive = setInterval(() => undefined, 1 << 30);
    const done = (signal: NodeJS.Signals) => {
      clearInterval(keepAlive);
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve(signal);
    };
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
  });
}
