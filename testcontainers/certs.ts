import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TlsFiles } from '../src/api/tls.ts';
import { run } from '../src/util/exec.ts';

/**
 * A throwaway cluster CA and certificates signed by it, made with the openssl CLI: one per agent (its IP address
 * as subject alternative name, so callers can verify whom they dialled) and one for a client (the operator's CLI).
 */

export interface TestCertificates {
  ca: string;
  /** Certificate and key for the agent listening on each address. */
  agent(address: string): TlsFiles;
  client: TlsFiles;
}

async function openssl(args: string[]): Promise<void> {
  await run('openssl', args, { missingHint: 'install the openssl package (the setup does)' });
}

export async function makeTestCertificates(dir: string, agentAddresses: readonly string[]): Promise<TestCertificates> {
  mkdirSync(dir, { recursive: true });
  const ca = join(dir, 'ca.pem');
  const caKey = join(dir, 'ca-key.pem');
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', caKey, '-out', ca, '-days', '2', '-subj', '/CN=lxcr test CA']);
  const issue = async (name: string, subjectAltName: string): Promise<TlsFiles> => {
    const key = join(dir, `${name}-key.pem`);
    const csr = join(dir, `${name}.csr`);
    const cert = join(dir, `${name}.pem`);
    const ext = join(dir, `${name}.ext`);
    writeFileSync(ext, `subjectAltName=${subjectAltName}\nextendedKeyUsage=serverAuth,clientAuth\n`);
    await openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${name}`]);
    await openssl(['x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext]);
    return { ca, cert, key };
  };
  const agents = new Map<string, TlsFiles>();
  for (const address of agentAddresses) agents.set(address, await issue(`agent-${address}`, `IP:${address}`));
  const client = await issue('client', 'DNS:lxcr-client');
  return {
    ca,
    agent: (address) => {
      const files = agents.get(address);
      if (!files) throw new Error(`no test certificate was made for ${address}`);
      return files;
    },
    client,
  };
}
