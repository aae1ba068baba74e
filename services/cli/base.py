"""What every registry subcommand shares: the call context, paging, and how results are printed."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from google.protobuf.message import Message
from harness.common.v1 import common_pb2
from harness.registry.v1.registry_pb2_grpc import RegistryStub

from services.cli import output
from services.cli.connect import Connection

PAGE_SIZE = 500


class UsageError(Exception):
    """A flag or argument value the CLI itself rejects (before any RPC)."""


@dataclass
class Ctx:
    """One CLI run against the registry."""

    conn: Connection
    json: bool = False
    _channel: grpc.Channel | None = field(default=None, repr=False)
    _stub: RegistryStub | None = field(default=None, repr=False)

    @property
    def stub(self) -> RegistryStub:
        if self._stub is None:
            self._channel = self.conn.channel()
            self._stub = RegistryStub(self._channel)
        return self._stub

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def call(self, rpc: str, request: Message) -> Message:
        """Calls a Registry RPC with the user credential and deadline; gRPC errors propagate."""
        method = getattr(self.stub, rpc)
        return method(request, metadata=self.conn.metadata(), timeout=self.conn.timeout_s)

    def list_all(self, rpc: str, request: Message, items: str) -> Message:
        """Follows next_page_token until the end; returns one response holding every item."""
        request.page.page_size = PAGE_SIZE
        combined: Message | None = None
        while True:
            resp = self.call(rpc, request)
            if combined is None:
                combined = resp
            else:
                getattr(combined, items).extend(getattr(resp, items))
            token = resp.page.next_page_token
            if not token or token == request.page.page_token:
                break
            request.page.page_token = token
        assert combined is not None
        combined.ClearField("page")
        return combined

    def emit(self, message: Message, human: Callable[[Message], None]) -> int:
        """Prints `message` as JSON with --json, else through `human`; returns exit code 0."""
        if self.json:
            print(output.to_json(message))
        else:
            human(message)
        sys.stdout.flush()
        return 0


Handler = Callable[[Ctx, argparse.Namespace], int]


def enum_arg(enum_type) -> Callable[[str], int]:
    """argparse `type=` that turns a short enum name into its value, listing choices on error."""

    def parse(text: str) -> int:
        try:
            return output.enum_value(enum_type, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = enum_type.DESCRIPTOR.name
    return parse


AGENT_TYPE = enum_arg(common_pb2.AgentType)
AGENT_STATE = enum_arg(common_pb2.AgentState)
SLO_CLASS = enum_arg(common_pb2.SloClass)
RISK_CLASS = enum_arg(common_pb2.RiskClass)


def short(enum_type, value: int) -> str:
    return output.enum_short(enum_type, value)


def key_value(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"{what} must look like NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta | None:
    """`90s`, `90m`, `12h`, `30d`, `2w`; None when `text` is not a duration."""
    m = _DURATION.match(text.strip())
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))}) if m else None
