"""vLLM's KV-cache event stream, on the wire (``vllm/distributed/kv_events.py``), both ways.

A publisher sends ZeroMQ multipart messages ``[topic, seq, payload]`` on a PUB socket: ``seq`` is
8 bytes big-endian, counting from 0 per publisher; ``payload`` is a msgpack ``KVEventBatch``
(``[ts, events, data_parallel_rank]``). An event is ``BlockStored`` (block hashes, the parent of
the first one, the token ids, block size, lora id, medium, lora name), ``BlockRemoved`` (block
hashes, medium) or ``AllBlocksCleared``. vLLM before its PR #42892 encoded events as positional
arrays with the tag first (``["BlockStored", [...], ...]``); newer vLLM encodes them as maps with
the tag under ``"type"``. The replay socket is a ROUTER: a client sends ``[b"", start_seq]`` (8
bytes big-endian) and gets ``[b"", seq, payload]`` per buffered batch from ``start_seq`` on, then
``[b"", -1 (signed), b""]``.

llm-d's kv-cache indexer reads the same stream (topic ``kv@<pod>@<model>``), so an engine that
talks to one talks to the other. The decoder accepts both encodings, block hashes as bytes or
ints, and ignores fields it does not know (newer vLLM adds them at the end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

ARRAY, MAP = "array", "map"  # the two event encodings (vLLM before / after PR #42892)
EVENT_FORMATS = (ARRAY, MAP)
END_SEQ = (-1).to_bytes(8, "big", signed=True)
MAX_PAYLOAD_BYTES = 16 << 20  # a batch larger than this is refused, not decoded


# --- encoding (the simulator) ------------------------------------------------------------------
class _Batch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class _StoredArr(msgspec.Struct, array_like=True, gc=False, tag="BlockStored"):
    block_hashes: list[bytes | int]
    parent_block_hash: bytes | int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None


class _RemovedArr(msgspec.Struct, array_like=True, gc=False, tag="BlockRemoved"):
    block_hashes: list[bytes | int]
    medium: str | None


class _ClearedArr(msgspec.Struct, array_like=True, gc=False, tag="AllBlocksCleared"):
    pass


class _StoredMap(msgspec.Struct, gc=False, tag="BlockStored"):
    block_hashes: list[bytes | int]
    parent_block_hash: bytes | int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None


class _RemovedMap(msgspec.Struct, gc=False, tag="BlockRemoved"):
    block_hashes: list[bytes | int]
    medium: str | None


class _ClearedMap(msgspec.Struct, gc=False, tag="AllBlocksCleared"):
    pass


_STRUCTS = {
    ARRAY: (_StoredArr, _RemovedArr, _ClearedArr),
    MAP: (_StoredMap, _RemovedMap, _ClearedMap),
}
_ENCODER = msgspec.msgpack.Encoder()


# --- the decoded form (what the router's index applies) -----------------------------------------
@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[bytes | int, ...]
    parent_block_hash: bytes | int | None
    token_ids: tuple[int, ...]
    block_size: int
    medium: str | None = "GPU"
    lora_name: str | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[bytes | int, ...]
    medium: str | None = "GPU"


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: tuple[KvEvent, ...]
    data_parallel_rank: int | None = None


class KvEventDecodeError(ValueError):
    """A payload that is not a vLLM KV event batch."""


def encode_batch(events: list[KvEvent], ts: float, fmt: str = MAP, dp_rank: int | None = 0) -> bytes:
    """The msgpack payload of a ``KVEventBatch`` as vLLM sends it (events in ``fmt``)."""
    stored, removed, cleared = _STRUCTS[fmt]
    wire: list[Any] = []
    for ev in events:
        if isinstance(ev, BlockStored):
            wire.append(
                stored(list(ev.block_hashes), ev.parent_block_hash, list(ev.token_ids), ev.block_size,
                       None, ev.medium, ev.lora_name)
            )  # fmt: skip
        elif isinstance(ev, BlockRemoved):
            wire.append(removed(list(ev.block_hashes), ev.medium))
        else:
            wire.append(cleared())
    return _ENCODER.encode(_Batch(ts, wire, dp_rank))


def seq_bytes(seq: int) -> bytes:
    return seq.to_bytes(8, "big", signed=True)


def parse_seq(raw: bytes) -> int:
    if len(raw) != 8:
        raise KvEventDecodeError(f"sequence frame must be 8 bytes, got {len(raw)}")
    return int.from_bytes(raw, "big", signed=True)


# --- decoding (the router) ------------------------------------------------------------------------
_DECODER = msgspec.msgpack.Decoder()


def decode_batch(payload: bytes) -> EventBatch:
    """Decodes a ``KVEventBatch`` payload in either encoding; raises KvEventDecodeError."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise KvEventDecodeError(f"batch of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        raw = _DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise KvEventDecodeError(f"not msgpack: {exc}") from None
    if isinstance(raw, (list, tuple)) and len(raw) >= 2:
        ts, events, dp = raw[0], raw[1], raw[2] if len(raw) > 2 else None
    elif isinstance(raw, dict) and "events" in raw:
        ts, events, dp = raw.get("ts", 0.0), raw["events"], raw.get("data_parallel_rank")
    else:
        raise KvEventDecodeError("a batch is [ts, events, dp_rank] or a map with 'events'")
    if not isinstance(events, (list, tuple)) or not isinstance(ts, (int, float)):
        raise KvEventDecodeError("batch 'events' must be a list and 'ts' a number")
    return EventBatch(float(ts), tuple(_event(e) for e in events), dp if isinstance(dp, int) else None)


_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
)
_REMOVED_FIELDS = ("block_hashes", "medium")


def _fields(raw: Any, names: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {n: raw.get(n) for n in names}
    values = list(raw[1:]) + [None] * len(names)  # omitted trailing fields are None
    return dict(zip(names, values, strict=False))


def _hashes(value: Any) -> tuple[bytes | int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(h, (bytes, int)) for h in value):
        raise KvEventDecodeError("block_hashes must be a list of ints or bytes")
    return tuple(value)


def _event(raw: Any) -> KvEvent:
    if isinstance(raw, dict):
        tag = raw.get("type")
    elif isinstance(raw, (list, tuple)) and raw:
        tag = raw[0]
    else:
        raise KvEventDecodeError("an event is [tag, ...] or a map with 'type'")
    if tag == "BlockStored":
        f = _fields(raw, _STORED_FIELDS)
        tokens, size, parent = f["token_ids"], f["block_size"], f["parent_block_hash"]
        if not isinstance(tokens, (list, tuple)) or not isinstance(size, int) or size < 1:
            raise KvEventDecodeError("BlockStored needs token_ids (list) and block_size (>= 1)")
        if parent is not None and not isinstance(parent, (bytes, int)):
            raise KvEventDecodeError("parent_block_hash must be an int, bytes or nil")
        medium = f["medium"] if isinstance(f["medium"], str) else None
        lora = f["lora_name"] if isinstance(f["lora_name"], str) else None
        return BlockStored(_hashes(f["block_hashes"]), parent, tuple(tokens), size, medium, lora)
    if tag == "BlockRemoved":
        f = _fields(raw, _REMOVED_FIELDS)
        medium = f["medium"] if isinstance(f["medium"], str) else None
        return BlockRemoved(_hashes(f["block_hashes"]), medium)
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    raise KvEventDecodeError(f"unknown event type {tag!r}")
