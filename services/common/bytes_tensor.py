"""Triton's BYTES tensor contents (each element a 4-byte little-endian length, then its bytes),
read for the number of elements a request's shape declares."""

from __future__ import annotations

import struct

_U32 = struct.Struct("<I")
MAX_BYTES_ELEMENTS = 4096  # strings in one BYTES input (a batch of 2048 texts, stop and bad words)


def bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """Triton's length-prefixed BYTES contents, read for the `count` elements the shape declares
    and no more: tritonclient's deserializer reads all there are, so a request declaring one
    element and sending a million empty ones held the event loop for half a second. ValueError
    says where the contents break."""
    out: list[bytes] = []
    offset, end = 0, len(raw)
    for i in range(count):
        if offset + 4 > end:
            raise ValueError(f"they end after {i} of the {count} elements declared")
        (size,) = _U32.unpack_from(raw, offset)
        offset += 4
        if size > end - offset:
            raise ValueError(f"element {i} declares {size} bytes and {end - offset} follow")
        out.append(raw[offset : offset + size])
        offset += size
    if offset != end:
        raise ValueError(f"{end - offset} bytes follow the {count} elements declared")
    return out
