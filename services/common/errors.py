"""Domain exceptions. Core modules raise these; one interceptor turns them into gRPC statuses."""

from __future__ import annotations

import grpc


class HarnessError(Exception):
    """Base of every error a caller should see. `code` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, trailers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.trailers = dict(trailers or {})


class InvalidArgument(HarnessError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(HarnessError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(HarnessError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(HarnessError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(HarnessError):
    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(HarnessError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(HarnessError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(HarnessError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(HarnessError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(HarnessError):
    """Over a limit. `retry_after_ms` travels as trailing metadata `retry-after-ms`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        trailers = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms is not None else None
        super().__init__(message, trailers=trailers)
        self.retry_after_ms = retry_after_ms
