// gRPC statuses -> typed errors, so an agent can `catch (e) { if (e instanceof
// PermissionDeniedError) ... }` instead of comparing numeric codes.
import { status as Status } from "@grpc/grpc-js";

/** Base of every error the Harness client throws for a failed call. */
export class HarnessError extends Error {
  /**
   * @param {string} message the server's message (what to fix)
   * @param {{code: number, metadata?: import("@grpc/grpc-js").Metadata, cause?: unknown}} info
   */
  constructor(message, { code, metadata, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    /** Numeric gRPC status code (`grpc.status`). */
    this.code = code ?? Status.UNKNOWN;
    /** The status name, e.g. "PERMISSION_DENIED". */
    this.codeName = Status[this.code] ?? "UNKNOWN";
    /** Trailing metadata of the failed call, as a plain object. */
    this.trailers = metadata ? metadata.getMap() : {};
  }

  /** Whether the same call may succeed if sent again later. */
  get retryable() {
    return false;
  }
}

export class InvalidArgumentError extends HarnessError {}
/** No or bad user credential (the bearer token). */
export class AuthenticationError extends HarnessError {}
/** The user may not invoke the agent, or the agent may not use the model or tool action. */
export class PermissionDeniedError extends HarnessError {}
/** Unknown agent, model or tool. */
export class NotFoundError extends HarnessError {}
/** The agent is not online (draining, retired), or the call does not fit its state. */
export class FailedPreconditionError extends HarnessError {}
export class CancelledError extends HarnessError {}

/** A rate limit, a budget or load shedding; `retryAfterMs` says when to try again, if known. */
export class RateLimitError extends HarnessError {
  constructor(message, info = {}) {
    super(message, info);
    const hint = Number.parseInt(String(this.trailers["retry-after-ms"] ?? ""), 10);
    /** @type {number | undefined} */
    this.retryAfterMs = Number.isFinite(hint) ? hint : undefined;
  }

  get retryable() {
    return true;
  }
}

/** No ready backend, or the front door could not be reached. */
export class UnavailableError extends HarnessError {
  get retryable() {
    return true;
  }
}

/** The call's deadline passed before it finished. */
export class DeadlineExceededError extends HarnessError {
  get retryable() {
    return true;
  }
}

const BY_CODE = new Map([
  [Status.INVALID_ARGUMENT, InvalidArgumentError],
  [Status.OUT_OF_RANGE, InvalidArgumentError],
  [Status.UNAUTHENTICATED, AuthenticationError],
  [Status.PERMISSION_DENIED, PermissionDeniedError],
  [Status.NOT_FOUND, NotFoundError],
  [Status.FAILED_PRECONDITION, FailedPreconditionError],
  [Status.RESOURCE_EXHAUSTED, RateLimitError],
  [Status.UNAVAILABLE, UnavailableError],
  [Status.DEADLINE_EXCEEDED, DeadlineExceededError],
  [Status.CANCELLED, CancelledError],
]);

/**
 * Turns a grpc-js error (anything with a numeric `code`) into the matching HarnessError
 * subclass; anything else is returned unchanged.
 * @param {any} err
 * @returns {Error}
 */
export function toHarnessError(err) {
  if (err instanceof HarnessError || typeof err?.code !== "number") {
    return err;
  }
  const ErrorClass = BY_CODE.get(err.code) ?? HarnessError;
  return new ErrorClass(err.details || err.message, { code: err.code, metadata: err.metadata, cause: err });
}
