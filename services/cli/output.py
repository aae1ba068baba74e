"""Printing: aligned tables for people, protobuf JSON (`--json`) for machines, enum short names."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp


def enum_prefix(enum_type) -> str:
    """`AGENT_STATE_` for AgentState: the part every value name starts with."""
    return enum_type.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")


def enum_short(enum_type, value: int) -> str:
    """AGENT_STATE_ONLINE -> "online"; 0 -> "" (unset)."""
    if value == 0:
        return ""
    try:
        return enum_type.Name(value).removeprefix(enum_prefix(enum_type)).lower()
    except ValueError:
        return str(value)


def enum_choices(enum_type) -> list[str]:
    """Short names of every set value, e.g. ["registered", "online", ...]."""
    prefix = enum_prefix(enum_type)
    return [v.name.removeprefix(prefix).lower() for v in enum_type.DESCRIPTOR.values if v.number != 0]


def enum_value(enum_type, short: str) -> int:
    """ "online" (or "ONLINE", "realtime-risk") -> AGENT_STATE_ONLINE; "" -> 0; ValueError if unknown."""
    if not short:
        return 0
    name = enum_prefix(enum_type) + short.strip().upper().replace("-", "_")
    try:
        return enum_type.Value(name)
    except ValueError:
        raise ValueError(f"{short!r} is not one of: {', '.join(enum_choices(enum_type))}") from None


def when(ts: Timestamp) -> str:
    """A set Timestamp as `2024-06-01 12:00:00Z`; unset as ""."""
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")


def to_json(message: Message) -> str:
    return json_format.MessageToJson(
        message, preserving_proto_field_name=True, indent=2, always_print_fields_with_no_presence=True
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], out: TextIO | None = None) -> None:
    """Left-aligned columns separated by two spaces; `(none)` when there are no rows."""
    out = out or sys.stdout
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    if not cells:
        print("(none)", file=out)
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def fields(pairs: Iterable[tuple[str, object]], out: TextIO | None = None) -> None:
    """`name: value` lines, names aligned."""
    out = out or sys.stdout
    items = [(k, "" if v is None else str(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    for k, v in items:
        print(f"{k + ':':<{width + 1}} {v}".rstrip(), file=out)
