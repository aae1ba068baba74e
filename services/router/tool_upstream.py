"""What a tool call needs besides its arguments: the arguments checked against the action's
input schema (before approval, cache or the tool see them), and the tool's upstream credential.

A credential is a registry secret named by the tool (`Tool.credential`); its value is read from
the registry (`RevealSecret`, routers only) when a call needs it and kept for `ttl_s`, so a rotated
secret reaches every router within that time. It goes into one request header to the tool and
nowhere else: not into errors, logs, audit records or the result cache.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

import grpc
import jsonschema
from harness.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.errors import HarnessError, InvalidArgument, NotFound, Unavailable
from services.common.mcp_client import DEFAULT_CREDENTIAL_HEADER

MAX_SCHEMA_ERRORS = 3


@lru_cache(maxsize=256)
def _validator(schema_text: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def check_arguments(
    tool: registry_pb2.Tool, action: registry_pb2.ToolAction, arguments: dict[str, Any]
) -> None:
    """INVALID_ARGUMENT naming where the arguments break the action's input schema (if it has one)."""
    if not action.input_schema:
        return
    try:
        validator = _validator(action.input_schema)
    except (ValueError, jsonschema.SchemaError):  # the registry checks schemas: only an old row
        raise Unavailable(
            f"{tool.name}.{action.name} has an input schema this router cannot read; re-register the tool"
        ) from None
    try:
        errors = sorted(validator.iter_errors(arguments), key=lambda e: [str(p) for p in e.absolute_path])
    except RecursionError:  # arguments nested past the stack (64 KiB of brackets)
        raise InvalidArgument(f"the arguments of {tool.name}.{action.name} are nested too deeply") from None
    if not errors:
        return
    described = []
    for err in errors[:MAX_SCHEMA_ERRORS]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        described.append(f"{'arguments' + where}: {err.message[:200]}")
    more = f" (and {len(errors) - MAX_SCHEMA_ERRORS} more)" if len(errors) > MAX_SCHEMA_ERRORS else ""
    raise InvalidArgument(
        f"the arguments of {tool.name}.{action.name} do not match its input schema: "
        + "; ".join(described)
        + more
        + " (tools/list shows the schema)"
    )


Reveal = Callable[[str], Awaitable[str]]


def reveal_from(stub: registry_pb2_grpc.RegistryStub, timeout_s: float = 5.0) -> Reveal:
    """RevealSecret over the router's registry channel (its `router` certificate)."""

    async def reveal(name: str) -> str:
        try:
            resp = await stub.RevealSecret(registry_pb2.RevealSecretRequest(name=name), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(exc.details() or f"no secret {name!r}") from None
            raise Unavailable(f"the registry answered {exc.code().name}: {exc.details()}") from None
        return resp.value

    return reveal


class Credentials:
    """Secret values by name, from the registry, kept for `ttl_s` seconds."""

    def __init__(self, reveal: Reveal | None, ttl_s: float = 30.0) -> None:
        self._reveal = reveal
        self.ttl_s = ttl_s
        self._values: dict[str, tuple[float, str]] = {}

    async def headers(self, tool: registry_pb2.Tool) -> dict[str, str]:
        """The header that carries the tool's credential ({} for a tool without one)."""
        if not tool.credential:
            return {}
        return {tool.credential_header or DEFAULT_CREDENTIAL_HEADER: await self._value(tool)}

    async def _value(self, tool: registry_pb2.Tool) -> str:
        name = tool.credential
        found = self._values.get(name)
        if found is not None and time.monotonic() - found[0] < self.ttl_s:
            return found[1]
        if self._reveal is None:
            raise Unavailable(
                f"tool {tool.name!r} needs its credential {name!r}, and this router has no registry to read it from"
            )
        try:
            value = await self._reveal(name)
        except NotFound:
            raise Unavailable(
                f"tool {tool.name!r} needs its credential {name!r}, which is not set: "
                f"`harness secrets set {name}`"
            ) from None
        except HarnessError as exc:  # never the value: it was not read
            raise Unavailable(
                f"the credential {name!r} of tool {tool.name!r} could not be read: {exc.message}"
            ) from exc
        self._values[name] = (time.monotonic(), value)
        return value
