import * as grpc from '@grpc/grpc-js';
import { CodedError, LxcrError, errorMessage, type ErrorCode } from '../util/errors.ts';

/**
 * The one place where our error codes become gRPC status codes and back. A server turns any thrown error into a
 * status with the error's message; a client turns a status back into an error with the same code, so callers
 * handle remote and local failures alike.
 */
const TO_STATUS: Record<ErrorCode, grpc.status> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  ABORTED: grpc.status.ABORTED,
  TOOL_MISSING: grpc.status.FAILED_PRECONDITION,
  COMMAND_FAILED: grpc.status.INTERNAL,
  TIMEOUT: grpc.status.DEADLINE_EXCEEDED,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  UNAUTHENTICATED: grpc.status.UNAUTHENTICATED,
  CHECKPOINT_FAILED: grpc.status.INTERNAL,
  RESTORE_FAILED: grpc.status.INTERNAL,
  INTEGRITY: grpc.status.DATA_LOSS,
  TESTBED: grpc.status.INTERNAL,
  INTERNAL: grpc.status.INTERNAL,
};

const FROM_STATUS: Partial<Record<grpc.status, ErrorCode>> = {
  [grpc.status.INVALID_ARGUMENT]: 'INVALID_ARGUMENT',
  [grpc.status.NOT_FOUND]: 'NOT_FOUND',
  [grpc.status.ALREADY_EXISTS]: 'ALREADY_EXISTS',
  [grpc.status.FAILED_PRECONDITION]: 'FAILED_PRECONDITION',
  [grpc.status.ABORTED]: 'ABORTED',
  [grpc.status.DEADLINE_EXCEEDED]: 'TIMEOUT',
  [grpc.status.UNAVAILABLE]: 'UNAVAILABLE',
  [grpc.status.DATA_LOSS]: 'INTEGRITY',
  [grpc.status.UNAUTHENTICATED]: 'UNAUTHENTICATED',
};

export function statusOf(err: unknown): grpc.status {
  return err instanceof LxcrError ? TO_STATUS[err.code] : grpc.status.INTERNAL;
}

export function toServiceError(err: unknown): Partial<grpc.ServiceError> {
  return { code: statusOf(err), details: errorMessage(err) };
}

/** A remote failure as our error, its code kept; `what` says which call failed on which peer. */
export function fromServiceError(err: grpc.ServiceError, what: string): LxcrError {
  return new CodedError(FROM_STATUS[err.code] ?? 'INTERNAL', `${what}: ${err.details || err.message}`);
}
