import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError, errorMessage } from '../util/errors.ts';

/**
 * Transport security of the agents' gRPC: mutual TLS. Every agent and every client holds a certificate signed by
 * the cluster's CA; an agent accepts only peers that present one (that is how clients are authenticated), and
 * checks that an agent it calls presents one for the address it dials. Plaintext exists only when asked for
 * explicitly (a local testbed), and the agent warns about it.
 */

/** PEM files: the cluster CA, and this agent's or client's certificate and key. */
export interface TlsFiles {
  ca: string;
  cert: string;
  key: string;
}

export type TransportSecurity = { tls: TlsFiles } | { insecure: true };

interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

function readPem(path: string): Buffer {
  const pem = readFileSync(path);
  if (!pem.includes('-----BEGIN ')) throw new Error('not a PEM file');
  return pem;
}

/** Why a PEM file cannot be used (missing, unreadable, not PEM), if it cannot: for checking a config up front. */
export function pemFileProblem(path: string): string | undefined {
  try {
    readPem(path);
    return undefined;
  } catch (err) {
    return `${path} cannot be used: ${errorMessage(err)}`;
  }
}

function load(files: TlsFiles): TlsMaterial {
  const read = (what: string, path: string) => {
    try {
      return readPem(path);
    } catch (err) {
      throw new InvalidArgumentError(`the TLS ${what} ${path} cannot be used: ${errorMessage(err)}`);
    }
  };
  return { ca: read('CA certificate', files.ca), cert: read('certificate', files.cert), key: read('private key', files.key) };
}

export function serverCredentials(security: TransportSecurity): grpc.ServerCredentials {
  if ('insecure' in security) return grpc.ServerCredentials.createInsecure();
  const { ca, cert, key } = load(security.tls);
  // true: a client without a certificate signed by the CA is turned away in the handshake.
  return grpc.ServerCredentials.createSsl(ca, [{ private_key: key, cert_chain: cert }], true);
}

export function channelCredentials(security: TransportSecurity): grpc.ChannelCredentials {
  if ('insecure' in security) return grpc.credentials.createInsecure();
  const { ca, cert, key } = load(security.tls);
  return grpc.credentials.createSsl(ca, key, cert);
}

/** The security a command line asks for: --tls-ca/--tls-cert/--tls-key, or --insecure; exactly one of the two. */
export function transportSecurityFromFlags(flags: { ca?: string; cert?: string; key?: string; insecure: boolean }, who: string): TransportSecurity {
  const given = [flags.ca, flags.cert, flags.key].filter((f) => f !== undefined && f !== '').length;
  if (flags.insecure && given > 0) throw new InvalidArgumentError('--insecure and the --tls-* options contradict each other: give one or the other');
  if (flags.insecure) return { insecure: true };
  if (given !== 3) {
    throw new InvalidArgumentError(
      `${who} needs --tls-ca, --tls-cert and --tls-key (PEM files: the cluster CA, and a certificate and key it signed), ` +
        'or --insecure for plaintext on a local testbed',
    );
  }
  return { tls: { ca: flags.ca!, cert: flags.cert!, key: flags.key! } };
}
