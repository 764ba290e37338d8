#!/usr/bin/env node
// The lxcr command. In a checkout it runs the TypeScript sources through tsx, so there is never a stale build
// in the way; an installed package (which ships dist/ and no src/) runs the compiled JavaScript.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const source = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
let entry = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));
if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  entry = source;
}
const { main } = await import(entry);
process.exitCode = await main(process.argv.slice(2));
