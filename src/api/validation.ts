import { validateHostId } from '../cluster/registry.ts';
import { validateContainerName } from '../runtime/lxc.ts';
import { InvalidArgumentError, errorMessage } from '../util/errors.ts';

/** Checks of request fields shared by the agents' and the public API. */

/** The problems of a request's container name: none, or the one that makes LXC refuse it. */
export function containerNameProblems(container: string): string[] {
  try {
    validateContainerName(container);
    return [];
  } catch (err) {
    return [errorMessage(err)];
  }
}

/** A request's container name, checked: an INVALID_ARGUMENT error names the call and what is wrong. */
export function requireContainerName(call: string, name: string): string {
  const [problem] = containerNameProblems(name);
  if (problem !== undefined) throw new InvalidArgumentError(`invalid ${call} request: ${problem}`);
  return name;
}

/** A request's host id, checked like the registry checks it. */
export function requireHostId(call: string, field: string, hostId: string): string {
  if (!hostId) throw new InvalidArgumentError(`invalid ${call} request: ${field} is required`);
  try {
    validateHostId(hostId);
  } catch (err) {
    throw new InvalidArgumentError(`invalid ${call} request: ${field}: ${errorMessage(err)}`);
  }
  return hostId;
}
