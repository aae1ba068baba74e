// Node.js client of the Harness Router (gRPC over mTLS). See README.md.
export { DEFAULT_PROTOS, HarnessClient, loadRouter } from "./client.js";
export {
  AuthenticationError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  HarnessError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitError,
  toHarnessError,
  UnavailableError,
} from "./errors.js";
export { fromStruct, toStruct } from "./struct.js";
