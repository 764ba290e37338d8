import { Testbed } from '../../testcontainers/testbed.ts';
import { SHARED_TESTBED } from './testbed.ts';

/** Starts the shared testbed once for the whole run; every test file attaches to it by name. */
export default async function setup(): Promise<() => Promise<void>> {
  const testbed = await Testbed.start(SHARED_TESTBED);
  return async () => {
    await testbed.teardown();
  };
}
