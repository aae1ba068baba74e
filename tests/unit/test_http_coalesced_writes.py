"""CoalescedWrites: what a connection writes in one event-loop turn goes out as one write at the
end of that turn, in order; closing sends what is pending first; nothing goes to a transport
that is already closing."""

from __future__ import annotations

import asyncio

from services.common.http_server import CoalescedWrites


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closing
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = self.closed = True

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_one_turns_writes_go_out_as_one_in_order():
    real = FakeTransport()
    out = CoalescedWrites(real, asyncio.get_running_loop())
    out.write(b"HTTP/1.1 200 OK\r\n\r\n")
    out.write(b"5\r\nhello\r\n")
    out.write(b"0\r\n\r\n")
    assert real.writes == []  # not before the turn ends
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]
    out.write(b"next")  # a later turn: its own write
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next"]


async def test_close_sends_what_is_pending_first():
    real = FakeTransport()
    out = CoalescedWrites(real, asyncio.get_running_loop())
    out.write(b"last words")
    out.close()
    assert real.writes == [b"last words"] and real.closed
    await asyncio.sleep(0)  # the flush scheduled for the turn's end finds nothing left
    assert real.writes == [b"last words"]


async def test_nothing_is_written_to_a_transport_already_closing():
    real = FakeTransport()
    out = CoalescedWrites(real, asyncio.get_running_loop())
    out.write(b"too late")
    real.closing = True  # the peer went away within the turn
    await asyncio.sleep(0)
    assert real.writes == []
    assert out.is_closing()


def test_the_rest_is_the_transports_own():
    real = FakeTransport()
    out = CoalescedWrites(real, asyncio.new_event_loop())
    assert out.get_extra_info("peername") == ("127.0.0.1", 1)
