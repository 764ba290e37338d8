import { InvalidArgumentError } from './errors.ts';

/**
 * Splits a listen address `host:port` (an IPv6 host in brackets; port 0 to 65535, 0 for any free port); throws
 * naming `what` when it is not one. The config validator and the servers share it, so both accept the same forms.
 */
export function parseListenAddress(address: string, what: string): { host: string; port: number } {
  const match = /^(\[[0-9a-fA-F:.]+\]|[^:[\]\s]+):(\d{1,5})$/.exec(address);
  const port = match ? Number(match[2]) : NaN;
  if (!match || port > 65_535) throw new InvalidArgumentError(`${what} must be host:port (port 0-65535, 0 for any free port; e.g. 10.0.0.1:7500, [::1]:7500), got "${address}"`);
  return { host: match[1]!.replace(/^\[|\]$/g, ''), port };
}
