import type * as grpc from '@grpc/grpc-js';
import { errorMessage } from '../util/errors.ts';
import { toServiceError } from './status.ts';
import type { HandlerContext } from './unary.ts';

/**
 * A server-streaming gRPC handler from an async function that writes the responses: the stream ends when the
 * function returns, and anything it throws ends the stream with the error's status (status.ts), logged and
 * reported as refused like a unary call's. `signal` aborts when the client cancels; nothing is written after.
 */
export function streamingHandler<Req, Res>(
  context: HandlerContext,
  method: string,
  describe: (request: Req) => Record<string, unknown>,
  produce: (request: Req, write: (response: Res) => void, signal: AbortSignal) => Promise<void>,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    const cancelled = new AbortController();
    call.on('cancelled', () => cancelled.abort());
    const write = (response: Res) => {
      if (!cancelled.signal.aborted) call.write(response);
    };
    Promise.resolve()
      .then(() => {
        context.authorize?.(call.metadata);
        return produce(call.request, write, cancelled.signal);
      })
      .then(
        () => {
          if (!cancelled.signal.aborted) call.end();
        },
        (err: unknown) => {
          const asked = describe(call.request);
          context.log.warn(`${method} failed`, { ...asked, error: errorMessage(err) });
          context.onRefused?.(method, asked, err);
          // grpc-js ends a server stream with the status of an 'error' it emits (destroy would skip the status).
          call.emit('error', Object.assign(new Error(errorMessage(err)), toServiceError(err)));
        },
      );
  };
}
