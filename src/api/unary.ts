import type * as grpc from '@grpc/grpc-js';
import { errorMessage } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';
import { fromServiceError, toServiceError } from './status.ts';

/** Told of every call that was refused or failed, e.g. to put it in the audit trail. */
export type RefusalListener = (method: string, request: Record<string, unknown>, error: unknown) => void;

export interface HandlerContext {
  log: Logger;
  onRefused?: RefusalListener;
  /** Checks a call's credentials before it is handled (the bearer token, see auth.ts); throws to refuse it. */
  authorize?: (metadata: grpc.Metadata) => void;
}

/**
 * A unary gRPC handler from an async function: its result is the response, anything it throws becomes a status
 * with the error's code and message (status.ts), and refusals are logged with what was asked.
 */
export function unaryHandler<Req, Res>(
  context: HandlerContext,
  method: string,
  describe: (request: Req) => Record<string, unknown>,
  handle: (request: Req) => Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  const { log, onRefused, authorize } = context;
  return (call, callback) => {
    const started = performance.now();
    Promise.resolve()
      .then(() => {
        authorize?.(call.metadata);
        return handle(call.request);
      })
      .then(
        (response) => callback(null, response),
        (err: unknown) => {
          const asked = describe(call.request);
          log.warn(`${method} refused or failed`, { ...asked, error: errorMessage(err), ms: Math.round(performance.now() - started) });
          onRefused?.(method, asked, err);
          callback(toServiceError(err));
        },
      );
  };
}

/** A unary call as a promise with a deadline; a failure comes back as our coded error naming `what`. */
export function callUnary<Res>(
  what: string,
  timeoutMs: number,
  invoke: (options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, response?: Res) => void) => void,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    invoke({ deadline: Date.now() + timeoutMs }, (err, response) => {
      if (err) reject(fromServiceError(err, what));
      else resolve(response!);
    });
  });
}
