import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';

describe('untilTerminated', () => {
  it('keeps a process with nothing else to do alive until SIGTERM, then returns the signal', async () => {
    const script = `import { untilTerminated } from './src/cli/signals.ts'; console.log('waiting'); console.log('got', await untilTerminated());`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    try {
      await new Promise<void>((resolve) => child.stdout.on('data', () => output.includes('waiting') && resolve()));
      await new Promise((r) => setTimeout(r, 500));
      expect(child.exitCode).toBeNull(); // still alive with no work of its own
      child.kill('SIGTERM');
      const code = await new Promise((resolve) => child.once('exit', resolve));
      expect(code).toBe(0);
      expect(output).toContain('got SIGTERM');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
