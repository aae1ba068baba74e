"""Secrets in the registry: only the routers read a value back, no read or Watch change carries
it, and a secret a tool names cannot be deleted. The servicer over a real (SQLite) store."""

from __future__ import annotations

import pytest
from harness.registry.v1 import registry_pb2 as pb

from services.common import context as reqctx
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.registry import convert as c
from services.registry.policy import Policy
from services.registry.servicer import RegistryServicer
from services.registry.store import Store

VALUE = "Bearer upstream-s3cret"


@pytest.fixture
def servicer(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'registry.db'}")
    yield RegistryServicer(store, Policy(store))
    store.close()


def act_as(**identity) -> None:
    reqctx.set_current(reqctx.new_context(reqctx.Identity(**identity)))


async def test_only_the_router_reads_a_secret_and_nothing_else_returns_it(servicer):
    act_as(user="alice", roles=("admin",))
    set_resp = await servicer.SetSecret(pb.SetSecretRequest(name="books-token", value=VALUE), None)
    assert set_resp.secret.name == "books-token" and set_resp.secret.updated_by == "alice"
    listed = await servicer.ListSecrets(pb.ListSecretsRequest(), None)
    tool = pb.Tool(name="books", version="1", endpoint="mcp+https://books/mcp", credential="books-token")
    tool.actions.add(name="read", risk=1)
    registered = await servicer.RegisterTool(pb.RegisterToolRequest(tool=tool), None)
    tools = await servicer.ListTools(pb.ListToolsRequest(), None)
    changes = servicer.store.changes_since(0, 100)
    _, snapshot = servicer.store.snapshot()
    shown = [set_resp, listed, registered, tools, *(c.change_pb(ch) for ch in changes + snapshot)]
    assert all("s3cret" not in str(m) for m in shown)
    assert any(ch.kind == "secret" for ch in changes)  # the change is audited, by name
    for who in ({"user": "alice", "roles": ("admin",)}, {"agent": "demo-agent"}, {"service": "cli"}):
        act_as(**who)
        with pytest.raises(PermissionDenied, match="only given to the routers"):
            await servicer.RevealSecret(pb.RevealSecretRequest(name="books-token"), None)
    act_as(service="router")
    assert (await servicer.RevealSecret(pb.RevealSecretRequest(name="books-token"), None)).value == VALUE
    with pytest.raises(NotFound, match="harness secrets set nope"):
        await servicer.RevealSecret(pb.RevealSecretRequest(name="nope"), None)


async def test_secret_and_tool_credential_refusals(servicer):
    act_as(user="alice", roles=("admin",))
    with pytest.raises(InvalidArgument, match="printable ASCII"):
        await servicer.SetSecret(pb.SetSecretRequest(name="t", value="a\nb"), None)
    with pytest.raises(InvalidArgument, match="the limit is 8192"):
        await servicer.SetSecret(pb.SetSecretRequest(name="t", value="x" * 9000), None)
    tool = pb.Tool(name="books", version="1", endpoint="https://books", credential="missing")
    tool.actions.add(name="read", risk=1)
    with pytest.raises(NotFound, match="not a stored secret"):
        await servicer.RegisterTool(pb.RegisterToolRequest(tool=tool), None)
    await servicer.SetSecret(pb.SetSecretRequest(name="missing", value="v"), None)
    tool.credential_header = "host"
    with pytest.raises(InvalidArgument, match="credential_header 'host'"):
        await servicer.RegisterTool(pb.RegisterToolRequest(tool=tool), None)
    tool.credential_header = "x-api-key"
    await servicer.RegisterTool(pb.RegisterToolRequest(tool=tool), None)
    with pytest.raises(FailedPrecondition, match=r"credential of tools \['books@1'\]"):
        await servicer.DeleteSecret(pb.DeleteSecretRequest(name="missing"), None)
    act_as(user="bob")
    with pytest.raises(PermissionDenied):
        await servicer.ListSecrets(pb.ListSecretsRequest(), None)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ("{", "is not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"type": "string"}', "must describe an object"),
        ('{"type": "object", "properties": {"a": {"type": "nonsense"}}}', "is not a valid JSON Schema"),
        ('{"type": "object", "x": "' + "y" * 70000 + '"}', "the limit is 65536"),
    ],
)
async def test_input_schemas_are_checked_when_registered(servicer, schema, message):
    act_as(user="alice", roles=("admin",))
    tool = pb.Tool(name="books", version="1", endpoint="https://books")
    tool.actions.add(name="read", risk=1, input_schema=schema)
    with pytest.raises(InvalidArgument, match=message):
        await servicer.RegisterTool(pb.RegisterToolRequest(tool=tool), None)


async def test_a_valid_schema_and_description_round_trip(servicer):
    act_as(user="alice", roles=("admin",))
    tool = pb.Tool(name="books", version="1", endpoint="https://books")
    schema = '{"type":"object","properties":{"ledger":{"type":"string"}},"required":["ledger"]}'
    tool.actions.add(name="read", risk=1, input_schema=schema, description="Read a ledger")
    await servicer.RegisterTool(pb.RegisterToolRequest(tool=tool), None)
    [found] = (await servicer.ListTools(pb.ListToolsRequest(), None)).tools
    assert (found.actions[0].input_schema, found.actions[0].description) == (schema, "Read a ledger")
