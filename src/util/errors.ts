/**
 * The error hierarchy. Every condition has its own class with a stable `code`; the API layer maps codes to
 * gRPC status codes in one place, and the CLI maps them to exit codes. Messages say what was wrong and what
 * to do about it.
 */

export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'FAILED_PRECONDITION'
  | 'ABORTED'
  | 'TOOL_MISSING'
  | 'COMMAND_FAILED'
  | 'TIMEOUT'
  | 'UNAVAILABLE'
  | 'UNAUTHENTICATED'
  | 'CHECKPOINT_FAILED'
  | 'RESTORE_FAILED'
  | 'INTEGRITY'
  | 'TESTBED'
  | 'INTERNAL';

export abstract class LxcrError extends Error {
  abstract readonly code: ErrorCode;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class InvalidArgumentError extends LxcrError {
  readonly code = 'INVALID_ARGUMENT';
}

export class NotFoundError extends LxcrError {
  readonly code = 'NOT_FOUND';
}

export class AlreadyExistsError extends LxcrError {
  readonly code = 'ALREADY_EXISTS';
}

/** The system is not in the state the operation needs (a container not running, a node not up, ...). */
export class FailedPreconditionError extends LxcrError {
  readonly code = 'FAILED_PRECONDITION';
}

/** A program we depend on (java, lxc-checkpoint, criu, ...) is not installed or not usable. */
/**
 * An error that crossed a boundary as a code and a message (an actor's reply, a remote agent's gRPC status)
 * and is rebuilt with that code on this side.
 */
export class CodedError extends LxcrError {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** A compare-and-set lost: another agent changed the record first (e.g. won the claim on a container). */
export class ConflictError extends LxcrError {
  readonly code = 'ABORTED';
}

export class ToolMissingError extends LxcrError {
  readonly code = 'TOOL_MISSING';
  constructor(
    readonly tool: string,
    hint: string,
    options?: { cause?: unknown },
  ) {
    super(`${tool} is not available: ${hint}`, options);
  }
}

/** A child process exited non-zero. Carries its argv, exit status and the tail of its output. */
export class CommandFailedError extends LxcrError {
  readonly code = 'COMMAND_FAILED';
  constructor(
    readonly argv: readonly string[],
    readonly exitCode: number | null,
    readonly signal: string | null,
    readonly stdout: string,
    readonly stderr: string,
    detail?: string,
  ) {
    const how = signal ? `was killed by ${signal}` : `exited with code ${exitCode}`;
    const tail = lastLines(stderr || stdout, 12);
    super(`${argv.join(' ')} ${how}${detail ? `: ${detail}` : ''}${tail ? `\n${tail}` : ''}`);
  }
}

export class TimeoutError extends LxcrError {
  readonly code = 'TIMEOUT';
}

export class UnavailableError extends LxcrError {
  readonly code = 'UNAVAILABLE';
}

/** A call without the credentials the agent asks for (its bearer token). */
export class UnauthenticatedError extends LxcrError {
  readonly code = 'UNAUTHENTICATED';
}

export class CheckpointError extends LxcrError {
  readonly code = 'CHECKPOINT_FAILED';
}

export class RestoreError extends LxcrError {
  readonly code = 'RESTORE_FAILED';
  /** The failure on one line (the message may go on: where CRIU's log is, the underlying error); for audit trails. */
  readonly summary: string;

  constructor(message: string, options?: { cause?: unknown; summary?: string }) {
    super(message, options);
    this.summary = options?.summary ?? message.split('\n')[0]!.trim();
  }
}

export class IntegrityError extends LxcrError {
  readonly code = 'INTEGRITY';
}

/** The local testbed could not be brought up, controlled or torn down. */
export class TestbedError extends LxcrError {
  readonly code = 'TESTBED';
}

export function lastLines(text: string, count: number): string {
  const lines = text.trimEnd().split('\n');
  return lines.slice(-count).join('\n');
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Whether an error is a refusal of the request as asked (what was asked for does not exist or is not in a state
 * that allows it) rather than a failure to do it.
 */
export function isRefusal(err: unknown): boolean {
  return err instanceof LxcrError && ['NOT_FOUND', 'FAILED_PRECONDITION', 'ABORTED', 'ALREADY_EXISTS'].includes(err.code);
}
