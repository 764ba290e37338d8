import { spawn, stop } from 'nact';
import { afterAll, describe, expect, it } from 'vitest';
import { ask, errorReply, replyOf, startActorSystem, tell, type Ref, type Reply } from '../../src/actors/system.ts';
import { CodedError, FailedPreconditionError, NotFoundError, TimeoutError } from '../../src/util/errors.ts';

type Msg = { n: number; replyTo: Ref<Reply<number>> };
const system = startActorSystem('actor-system-test');
afterAll(() => stop(system));

const doubler = spawn(system, (_state: undefined, msg: Msg) => {
  tell(msg.replyTo, msg.n < 0 ? errorReply(new NotFoundError(`no ${msg.n}`)) : replyOf(msg.n * 2));
  return undefined;
});

describe('the typed actor layer', () => {
  it('answers with the value, or throws the error with its stable code', async () => {
    expect(await ask(doubler, (replyTo) => ({ n: 21, replyTo }), 1000, 'doubling')).toBe(42);
    const error = await ask(doubler, (replyTo) => ({ n: -1, replyTo }), 1000, 'doubling').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CodedError);
    expect((error as CodedError).code).toBe('NOT_FOUND');
    expect((error as Error).message).toBe('no -1');
  });

  it('ends a query no one answers with a TimeoutError naming it', async () => {
    const silent = spawn(system, (_state: undefined, _msg: Msg) => undefined);
    await expect(ask(silent, (replyTo) => ({ n: 1, replyTo }), 100, 'the silent query')).rejects.toThrow(TimeoutError);
    await expect(ask(silent, (replyTo) => ({ n: 1, replyTo }), 100, 'the silent query')).rejects.toThrow(/the silent query got no answer within 100 ms/);
  });

  it('fails at once, not at the timeout, when asking a stopped actor', async () => {
    const stopped = spawn(system, (_state: undefined, _msg: Msg) => undefined);
    stop(stopped);
    const started = Date.now();
    const error = await ask(stopped, (replyTo) => ({ n: 1, replyTo }), 5000, 'checkpoint of x').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect((error as Error).message).toMatch(/^checkpoint of x: its actor is stopped/);
    expect(Date.now() - started).toBeLessThan(1000);
  });
});
