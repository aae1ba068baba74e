"""gRPC's length-prefixed message framing (5 bytes: compressed flag, big-endian length), which
Envoy hands to an external processor as raw body bytes, cut anywhere."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from services.common.errors import InvalidArgument

M = TypeVar("M", bound=Message)
MAX_MESSAGE_BYTES = 64 << 20


def replace_text(response: Any, text: str) -> None:
    """Sets a Triton response's `text_output` (one BYTES element) to `text`."""
    for i, output in enumerate(response.outputs):
        if output.name == "text_output" and i < len(response.raw_output_contents):
            data = text.encode()
            response.raw_output_contents[i] = len(data).to_bytes(4, "little") + data


def frame(message: Message) -> bytes:
    data = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


class Frames(Generic[M]):
    """Reassembles messages of one type from body chunks."""

    def __init__(self, message_type: type[M]) -> None:
        self.message_type = message_type
        self.buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self.buffer)

    def feed(self, data: bytes) -> list[M]:
        self.buffer += data
        out: list[M] = []
        while len(self.buffer) >= 5:
            if self.buffer[0] != 0:
                raise InvalidArgument("compressed gRPC messages are not supported on the ext_proc path")
            size = int.from_bytes(self.buffer[1:5], "big")
            if size > MAX_MESSAGE_BYTES:
                raise InvalidArgument(f"a gRPC message of {size} bytes is over the {MAX_MESSAGE_BYTES} limit")
            if len(self.buffer) < 5 + size:
                break
            try:
                out.append(self.message_type.FromString(bytes(self.buffer[5 : 5 + size])))
            except DecodeError as exc:
                raise InvalidArgument(f"not a {self.message_type.__name__}: {exc}") from exc
            del self.buffer[: 5 + size]
        return out
