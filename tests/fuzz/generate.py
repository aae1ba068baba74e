"""Table-driven request generator for the fuzz suite: malformed, oversized and boundary values
for every field of a request message, derived from its protobuf descriptor.

For a method it yields (label, request bytes): the method's plausible base request (so checks
past "name is required" are reached), then that base with one field at a time set to each
hostile value of its type (nested fields too, a few levels down), then raw bytes that do not
parse (truncated, invalid UTF-8, too deep). Deterministic for a seed; `limit` caps the count.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

F = FieldDescriptor
BIG_TEXT = "x" * 70_000
STRINGS = ["", BIG_TEXT, "\u202e\u0000", "a b,c;d", "../../etc/passwd", "é" * 300, "-1", "9" * 30, "*"]
INTS32 = [-1, 2**31 - 1, -(2**31)]
INTS64 = [-1, 2**63 - 1, -(2**63), 2**53 + 1]
UINTS32 = [2**32 - 1]
UINTS64 = [2**64 - 1]
DOUBLES = [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, -0.0, 5e-324]
FLOATS = [float("nan"), float("inf"), -3.4e38]
REPEAT = 2_000  # elements in an oversized repeated field or map (over every count limit)

_SCALARS = {
    F.TYPE_STRING: STRINGS,
    F.TYPE_BYTES: [b"", b"\xff" * 10_000],
    F.TYPE_INT32: INTS32,
    F.TYPE_SINT32: INTS32,
    F.TYPE_SFIXED32: INTS32,
    F.TYPE_INT64: INTS64,
    F.TYPE_SINT64: INTS64,
    F.TYPE_SFIXED64: INTS64,
    F.TYPE_UINT32: UINTS32,
    F.TYPE_FIXED32: UINTS32,
    F.TYPE_UINT64: UINTS64,
    F.TYPE_FIXED64: UINTS64,
    F.TYPE_DOUBLE: DOUBLES,
    F.TYPE_FLOAT: FLOATS,
    F.TYPE_BOOL: [True],
}


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _well_known(field: FieldDescriptor) -> list[Message] | None:
    """Hostile values of Timestamp, Duration and Struct fields."""
    name = field.message_type.full_name
    cls = message_class(field.message_type)
    if name == "google.protobuf.Timestamp":
        return [cls(seconds=s, nanos=n) for s, n in ((2**62, 0), (-(2**62), 0), (253402300800, 0), (1, -1))]
    if name == "google.protobuf.Duration":
        return [cls(seconds=s, nanos=n) for s, n in ((2**62, 0), (-5, 0), (315576000001, 0), (1, -1))]
    if name == "google.protobuf.Struct":
        nan, deep, wide = cls(), cls(), cls()
        nan.fields["n"].number_value = float("nan")
        node = deep
        for _ in range(28):  # deep, yet still parseable by the client
            node = node.fields["d"].struct_value
        for i in range(REPEAT):
            wide.fields[f"k{i}"].string_value = "v" * 20
        big = cls()
        big.fields["s"].string_value = BIG_TEXT
        return [nan, deep, wide, big]
    return None


def _hostile(field: FieldDescriptor) -> list:
    if field.type == F.TYPE_ENUM:
        return [99, -1]
    if field.type == F.TYPE_MESSAGE:
        return _well_known(field) or []
    return _SCALARS.get(field.type, [])


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _set(msg: Message, field: FieldDescriptor, value) -> None:
    if _is_map(field):  # a hostile string becomes a key (and, where it can, the value)
        value_field = field.message_type.fields_by_name["value"]
        if not isinstance(value, str) or field.message_type.fields_by_name["key"].type != F.TYPE_STRING:
            raise TypeError("maps get string keys only")
        target = getattr(msg, field.name)
        if value_field.type == F.TYPE_STRING:
            target[value] = value
        else:
            target[value].SetInParent()
        return
    if field.is_repeated:
        target = getattr(msg, field.name)
        if field.type == F.TYPE_MESSAGE:
            target.add().CopyFrom(value)
        else:
            target.append(value)
        return
    if field.type == F.TYPE_MESSAGE:
        getattr(msg, field.name).CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def _oversized(msg: Message, field: FieldDescriptor) -> bool:
    """Fills a repeated field or map with REPEAT elements; False if it cannot."""
    if _is_map(field):
        target = getattr(msg, field.name)
        value_field = field.message_type.fields_by_name["value"]
        key_is_text = field.message_type.fields_by_name["key"].type == F.TYPE_STRING
        if not key_is_text or value_field.type not in (F.TYPE_STRING, F.TYPE_MESSAGE):
            return False
        for i in range(REPEAT):
            if value_field.type == F.TYPE_STRING:
                target[f"k{i}"] = "v"
            else:
                target[f"k{i}"].SetInParent()
        return True
    if not field.is_repeated:
        return False
    target = getattr(msg, field.name)
    if field.type == F.TYPE_MESSAGE:
        for _ in range(REPEAT):
            target.add()
    elif field.type == F.TYPE_STRING:
        target.extend(["x"] * REPEAT)
    elif field.type in (F.TYPE_ENUM, F.TYPE_BOOL) or field.type in _SCALARS:
        target.extend([1] * REPEAT if field.type != F.TYPE_BOOL else [True] * REPEAT)
    else:
        return False
    return True


def _paths(
    descriptor: Descriptor, depth: int = 3, prefix: tuple = ()
) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Field paths to mutate: every field, and the fields of sub-messages below it (of a
    repeated one, its first element's)."""
    for field in descriptor.fields:
        path = (*prefix, field)
        yield path
        if (
            depth > 1
            and field.type == F.TYPE_MESSAGE
            and not _is_map(field)
            and not field.message_type.full_name.startswith("google.protobuf.")
        ):
            yield from _paths(field.message_type, depth - 1, path)


def _mutated(base: Message, path: tuple[FieldDescriptor, ...], value) -> Message:
    msg = type(base)()
    msg.CopyFrom(base)
    parent = msg
    for field in path[:-1]:
        parent = getattr(parent, field.name)
        if field.is_repeated:  # the first element (added if there is none)
            parent = parent[0] if len(parent) else parent.add()
    if value is _OVERSIZED:
        if not _oversized(parent, path[-1]):
            raise ValueError("not repeatable")
    else:
        _set(parent, path[-1], value)
    return msg


_OVERSIZED = object()


def raw_cases(descriptor: Descriptor, base: Message) -> list[tuple[str, bytes]]:
    good = base.SerializeToString()
    deep = b""
    for _ in range(200):  # field 1 as a nested message, 200 levels: past every parser's limit
        deep = b"\x0a" + _varint(len(deep)) + deep
    cases = [
        ("raw: truncated", (good or b"\x0a\x05abc")[:-1] + b"\x0a\x40ab"),
        ("raw: bad wire type", b"\x0f\x01"),
        ("raw: 200 levels deep", deep),
    ]
    string_field = next((f for f in descriptor.fields if f.type == F.TYPE_STRING), None)
    if string_field is not None:
        tag = _varint(string_field.number << 3 | 2)
        cases.append(("raw: invalid UTF-8", tag + b"\x03\xff\xfe\xfd"))
    return cases


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def cases(descriptor: Descriptor, base: Message | None, *, seed: int, limit: int) -> list[tuple[str, bytes]]:
    """Up to `limit` field mutations of `base` (sampled with `seed`), plus the raw-byte cases."""
    base = base if base is not None else message_class(descriptor)()
    mutations: list[tuple[str, Message]] = [("base", base), ("empty", message_class(descriptor)())]
    for path in _paths(descriptor):
        label = ".".join(f.name for f in path)
        for value in [*_hostile(path[-1]), _OVERSIZED]:
            try:
                msg = _mutated(base, path, value)
            except (ValueError, TypeError):
                continue  # a value this field's type cannot hold
            shown = "oversized" if value is _OVERSIZED else _show(value)
            mutations.append((f"{label}={shown}", msg))
    rng = random.Random(seed)
    head, rest = mutations[:2], mutations[2:]
    picked = head + (rng.sample(rest, limit - 2) if len(rest) > limit - 2 else rest)
    return [(label, msg.SerializeToString()) for label, msg in picked] + raw_cases(descriptor, base)


def _show(value) -> str:
    text = repr(value) if not isinstance(value, Message) else " ".join(str(value).split())
    return text if len(text) <= 40 else text[:37] + "..."
