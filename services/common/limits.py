"""Checks for the bounds every contract puts on counts, lengths, durations and numbers.

Each check raises InvalidArgument naming the field and the limit, so a caller learns what to
change. The limits themselves live with each service's contract (and in its proto comments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized
from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import InvalidArgument

# Timestamps a contract accepts: protobuf allows years 1..9999, but nothing in the Harness
# predates the Unix epoch or is planned beyond 2200, so anything outside is a typo or a probe.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)


def check_length(field: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{field} is {len(value)} characters; the limit is {limit}")
    return value


def holds_nul(field: str) -> InvalidArgument:
    return InvalidArgument(f"{field} holds a NUL character (\\u0000), which is refused")


def check_stop_strings(field: str, stops: Sequence[str], max_count: int, max_chars: int) -> None:
    """Stop strings as the router takes them on a request and the registry stores them as an
    agent version's defaults: at most `max_count`, each 1 to `max_chars` characters, no NUL."""
    check_count(field, stops, max_count)
    for i, stop in enumerate(stops):
        check_length(f"{field}[{i}]", stop, max_chars)
        if not stop:  # an engine would stop before the first token, or ignore it: neither asked for
            raise InvalidArgument(f"{field}[{i}] is empty: a stop string needs at least one character")
        if "\x00" in stop:
            raise holds_nul(f"{field}[{i}]")


def check_count(field: str, items: Sized, limit: int) -> None:
    if len(items) > limit:
        raise InvalidArgument(f"{field} has {len(items)} entries; the limit is {limit}")


def check_range(field: str, value: int | float, low: int | float, high: int | float) -> None:
    """`value` within [low, high]; NaN and infinities are refused."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a finite number, got {value}")
    if not low <= value <= high:
        raise InvalidArgument(f"{field} is {value}; it must be between {low} and {high}")


def duration_seconds(field: str, duration: Duration, max_seconds: float) -> float:
    """A Duration as seconds, in [0, max_seconds]."""
    if duration.nanos and (abs(duration.nanos) >= 1_000_000_000 or (duration.seconds * duration.nanos) < 0):
        raise InvalidArgument(f"{field} is not a valid Duration (nanos {duration.nanos})")
    seconds = duration.seconds + duration.nanos / 1e9
    if not 0 <= seconds <= max_seconds:
        raise InvalidArgument(f"{field} is {seconds:g} s; it must be between 0 and {max_seconds:g} s")
    return seconds


def timestamp(field: str, ts: Timestamp) -> datetime:
    """A Timestamp as an aware datetime in [MIN_TIME, MAX_TIME]."""
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(f"{field} is not a valid Timestamp (nanos {ts.nanos})")
    low, high = int(MIN_TIME.timestamp()), int(MAX_TIME.timestamp())
    if not low <= ts.seconds < high:
        raise InvalidArgument(
            f"{field} is out of range ({ts.seconds} s since the epoch); use a time between "
            f"{MIN_TIME:%Y-%m-%d} and {MAX_TIME:%Y-%m-%d}"
        )
    return ts.ToDatetime(tzinfo=UTC)


def timestamp_us(field: str, ts: Timestamp) -> int:
    """A Timestamp as integer microseconds since the epoch, in [MIN_TIME, MAX_TIME]."""
    timestamp(field, ts)
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def page_offset(token: str, limit: int = 2**62) -> int:
    """A page token that is a plain offset (as the servers issue it)."""
    if not token.isdigit() or not token.isascii() or len(token) > 19 or int(token) > limit:
        raise InvalidArgument("page_token is not one this server issued; pass next_page_token as given")
    return int(token)


def check_struct(field: str, struct: Struct, *, max_bytes: int = 16 * 1024, max_depth: int = 16) -> None:
    """A google.protobuf.Struct that JSON can hold: finite numbers, bounded nesting and size."""
    size = struct.ByteSize()
    if size > max_bytes:
        raise InvalidArgument(f"{field} is {size} bytes; the limit is {max_bytes}")
    stack: list[tuple[Value | Struct, int]] = [(struct, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise InvalidArgument(f"{field} nests deeper than {max_depth} levels")
        if isinstance(node, Struct):
            stack.extend((v, depth + 1) for v in node.fields.values())
            continue
        kind = node.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(node.number_value):
            raise InvalidArgument(f"{field} holds {node.number_value}; JSON numbers must be finite")
        if kind == "struct_value":
            stack.append((node.struct_value, depth))
        elif kind == "list_value":
            stack.extend((v, depth + 1) for v in node.list_value.values)


def check_json(field: str, value: object, *, max_depth: int = 16) -> None:
    """Parsed JSON held to the rules a gRPC request's Struct is (check_struct, and the services'
    interceptor's refusal of NUL in any string), for front doors that take JSON: Python's parser
    reads NaN and Infinity, and a NUL would reach records no database can store."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise InvalidArgument(f"{field} nests deeper than {max_depth} levels")
        if isinstance(node, float) and not math.isfinite(node):
            raise InvalidArgument(f"{field} holds {node}; JSON numbers must be finite")
        if isinstance(node, str) and "\x00" in node:
            raise InvalidArgument(f"{field} holds a string with a NUL character (\\u0000), which is refused")
        if isinstance(node, dict):
            stack.extend((k, depth) for k in node)  # keys are strings too
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
