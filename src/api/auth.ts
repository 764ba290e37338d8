import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError, UnauthenticatedError, errorMessage } from '../util/errors.ts';

/**
 * Client authentication by bearer token, on top of the transport's (mutual TLS): an agent given a token file asks
 * every public API call (lxcr.v1.ClusterService) for `authorization: Bearer <token>`. Agent-to-agent calls
 * (lxcr.v1.AgentService), health and reflection stay on the transport's authentication alone; an agent that
 * forwards a public call to another agent sends its own token, so the agents of a cluster share one token file.
 */

/** The shortest token accepted: shorter ones can be guessed. */
const MIN_TOKEN_LENGTH = 16;

/** The token in `path` (surrounding whitespace and the final newline ignored); throws naming the file. */
export function readTokenFile(path: string, option: string): string {
  let token: string;
  try {
    token = readFileSync(path, 'utf8').trim();
  } catch (err) {
    throw new InvalidArgumentError(`${option} ${path} cannot be read: ${errorMessage(err)}`, { cause: err });
  }
  if (token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) {
    throw new InvalidArgumentError(
      `${option} ${path} must hold one token of at least ${MIN_TOKEN_LENGTH} characters without spaces (e.g. from \`openssl rand -hex 32\`), got ${token.length} characters`,
    );
  }
  return token;
}

/** The metadata a client sends with each call: the token, or nothing without one. */
export function bearerMetadata(token: string | undefined): grpc.Metadata {
  const metadata = new grpc.Metadata();
  if (token !== undefined) metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

const digest = (text: string) => createHash('sha256').update(text).digest();

/**
 * A check of a call's metadata against the token: throws UnauthenticatedError, saying what to do, when the call
 * carries no bearer token or another one. The comparison takes the same time whatever the token sent (digests of
 * equal length compared in constant time), so timing tells nothing of the expected token.
 */
export function requireBearerToken(token: string): (metadata: grpc.Metadata) => void {
  const expected = digest(token);
  return (metadata) => {
    const values = metadata.get('authorization');
    const header = values.length === 1 && typeof values[0] === 'string' ? values[0] : undefined;
    const match = header === undefined ? undefined : /^Bearer (\S+)$/i.exec(header);
    if (!match) {
      throw new UnauthenticatedError(
        'this agent requires a bearer token: send metadata "authorization: Bearer <token>" (lxcr: --token-file FILE holding the cluster\'s token)',
      );
    }
    if (!timingSafeEqual(digest(match[1]!), expected)) {
      throw new UnauthenticatedError('the bearer token is not this cluster\'s: check the token file given with --token-file');
    }
  };
}
