import { dispatch, query, spawn, start, type ActorSystemRef, type Ref, type SupervisionActorFunc } from 'nact';
import { CodedError, FailedPreconditionError, LxcrError, TimeoutError, errorMessage, type ErrorCode } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';

/**
 * A thin typed layer over nact, whose own typings are loose: systems are always named, queries always have a
 * timeout that ends in a TimeoutError, asking a stopped actor fails at once, and actors answer with a Reply
 * instead of throwing (nact would otherwise leave the asker waiting until its timeout).
 */

export type { Ref };

export function startActorSystem(name: string): ActorSystemRef {
  return start(name);
}

/** An actor's answer: a value, or the error that stopped it, with its stable code. */
export type Reply<T> = { ok: true; value: T } | { ok: false; code: ErrorCode; message: string };

export function replyOf<T>(value: T): Reply<T> {
  return { ok: true, value };
}

export function errorReply(err: unknown): Reply<never> {
  return { ok: false, code: err instanceof LxcrError ? err.code : 'INTERNAL', message: errorMessage(err) };
}

/**
 * Sends a message and forgets it. nact drops a message to a stopped actor without a word, so a caller that
 * needs to know whether it arrived must {@link ask} instead (which fails for a stopped actor).
 */
export function tell<T>(actor: Ref<T>, message: T): void {
  dispatch(actor, message);
}

/** Asks an actor and waits for its Reply, at most `timeoutMs`; a failed Reply is thrown with its code. */
export async function ask<Req, Res>(actor: Ref<Req>, request: (replyTo: Ref<Reply<Res>>) => Req, timeoutMs: number, what: string): Promise<Res> {
  let reply: Reply<Res>;
  try {
    reply = await query<Req, (replyTo: Ref<Reply<Res>>) => Req>(actor, request, timeoutMs);
  } catch (err) {
    if (err instanceof Error && err.message === 'Query Timeout') {
      throw new TimeoutError(`${what} got no answer within ${timeoutMs} ms`, { cause: err });
    }
    throw new FailedPreconditionError(`${what}: its actor is stopped (${errorMessage(err)})`, { cause: err });
  }
  if (reply.ok) return reply.value;
  // The error a failed Reply carries, rebuilt on the asking side with its code.
  throw new CodedError(reply.code, reply.message);
}

/**
 * Runs one step of an actor and answers `replyTo` with its outcome. A failure is logged and answered, never
 * thrown: the actor goes on with its next message, and the asker learns why at once instead of timing out.
 */
export async function respond<T>(log: Logger, what: string, step: () => Promise<T>, replyTo: Ref<Reply<T>> | undefined): Promise<void> {
  const reply = await step().then(replyOf, (err: unknown) => {
    log.error(`${what} failed`, { error: errorMessage(err) });
    return errorReply(err);
  });
  if (replyTo) tell(replyTo, reply);
}

/**
 * A host-wide service actor (the replicator, the garbage collector): one message at a time, each answered with
 * its outcome through `respond`, crashes logged and resumed.
 */
export function spawnServiceActor<Msg extends { replyTo: Ref<Reply<Out>> }, Out>(
  parent: Ref<unknown>,
  name: string,
  log: Logger,
  describe: (message: Msg) => string,
  step: (message: Msg) => Promise<Out>,
): Ref<Msg> {
  return spawn(
    parent,
    async (_state: undefined, message: Msg) => {
      await respond(log, describe(message), () => step(message), message.replyTo);
      return undefined;
    },
    name,
    { onCrash: resumeAfterCrash(log, name) },
  );
}

/** Supervision for every actor of ours: log what escaped a handler and go on with the next message. */
export function resumeAfterCrash<Msg, ParentRef extends Ref<unknown>>(log: Logger, what: string): SupervisionActorFunc<Msg, ParentRef, Ref<unknown>> {
  return (_message, err, ctx) => {
    log.error(`${what} crashed; resuming`, { error: errorMessage(err) });
    return ctx.resume;
  };
}
