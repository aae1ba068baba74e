"""Admission for the router hot path: per-agent/per-user rate limits and SLO-class flow control.

No gRPC here: failures are domain errors (services.common.errors) that the shared interceptor
maps to statuses and `retry-after-ms` trailers.
"""

from .limits import MemoryRateLimiter, RateLimiter, RateLimits, Reservation
from .queues import ClassBounds, FlowConfig, FlowController, FlowStats, SloClass
from .redis_limits import RedisRateLimiter

__all__ = [
    "ClassBounds",
    "FlowConfig",
    "FlowController",
    "FlowStats",
    "MemoryRateLimiter",
    "RateLimiter",
    "RateLimits",
    "RedisRateLimiter",
    "Reservation",
    "SloClass",
]
