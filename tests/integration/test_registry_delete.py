"""Deleting what the registry creates, through the `harness` CLI against a real registry: each
delete is refused while something still uses the entity (naming it), then succeeds once it is
free, and reaches Watch as a deletion."""

from __future__ import annotations

import grpc
from harness.registry.v1 import registry_pb2 as pb
from harness.registry.v1.registry_pb2_grpc import RegistryStub

from services.registry.seed import seed_registry
from tests.integration.test_cli_registry import cli, registry, root  # noqa: F401 (fixtures)
from tests.integration.test_registry_server import DEMO


async def _seed(registry, mint_token):  # noqa: F811
    admin = (("authorization", f"Bearer {mint_token('alice', 'admin')}"),)
    async with grpc.aio.insecure_channel(registry.address) as channel:
        await seed_registry(RegistryStub(channel), DEMO, admin)


async def _deleted_keys(registry, mint_token, since: int) -> set[tuple[int, str]]:  # noqa: F811
    """(kind, key) of every deletion in Watch after `since`."""
    admin = (("authorization", f"Bearer {mint_token('alice', 'admin')}"),)
    out = set()
    async with grpc.aio.insecure_channel(registry.address) as channel:
        call = RegistryStub(channel).Watch(pb.WatchRequest(since_revision=since), metadata=admin)
        async for message in call:
            out |= {(c.kind, c.key) for c in message.changes if c.deleted}
            if not message.more:
                break
        call.cancel()
    return out


async def test_delete_refuses_while_used_then_removes(cli, registry, mint_token):  # noqa: F811
    await _seed(registry, mint_token)
    refused = [
        (("teams", "delete", "finance"), "project ledger"),
        (("projects", "delete", "ledger"), "agent demo-agent"),
        (("models", "delete", "llama-3-8b"), "agent version demo-agent@v1"),
        (("tools", "delete", "ledger", "--version", "1"), "demo-agent@v1"),
        (("agents", "delete", "demo-agent"), "retire it first"),
        (("versions", "delete", "demo-agent", "v1"), "100%"),
        (("users", "delete", "bob"), "role:analyst"),
    ]
    for argv, needle in refused:
        r = await cli(*argv)
        assert r.rc == 1 and "FAILED_PRECONDITION" in r.err and needle in r.err, (argv, r.err)
    r = await cli("users", "delete", "bob", user="bob")
    assert r.rc == 1 and "PERMISSION_DENIED" in r.err
    start = (await cli("agents", "get", "demo-agent", "--json")).json()["agent"]["revision"]

    steps = [
        ("users", "delete", "mallory"),
        ("policies", "remove", "g", "bob", "role:analyst", "ledger"),
        ("users", "delete", "bob"),
        ("agents", "state", "demo-agent", "draining"),
        ("agents", "state", "demo-agent", "offline"),
        ("agents", "state", "demo-agent", "retired"),
        ("agents", "delete", "demo-agent"),
        ("models", "delete", "llama-3-8b"),
        ("tools", "delete", "ledger", "--version", "1"),
    ]
    for argv in steps:
        r = await cli(*argv)
        assert r.rc == 0, (argv, r.err)
    assert (await cli("users", "get", "bob")).rc == 1
    deleted = await _deleted_keys(registry, mint_token, int(start))
    assert {
        (pb.ENTITY_KIND_USER, "bob"),
        (pb.ENTITY_KIND_USER, "mallory"),
        (pb.ENTITY_KIND_AGENT, "demo-agent"),
        (pb.ENTITY_KIND_MODEL, "llama-3-8b"),
        (pb.ENTITY_KIND_TOOL, "ledger@1"),
    } <= deleted


async def test_delete_version_and_user_keys(cli, registry, mint_token):  # noqa: F811
    await _seed(registry, mint_token)
    assert (await cli("versions", "create", "demo-agent", "v2", "--model", "llama-3-8b")).rc == 0
    r = await cli("versions", "delete", "demo-agent", "v2", "--json")
    assert [v["version"] for v in r.json()["agent"]["versions"]] == ["v1"]
    r = await cli("versions", "delete", "demo-agent", "v9")
    assert r.rc == 1 and "NOT_FOUND" in r.err and "v9" in r.err
    key = (await cli("keys", "create", "mallory", "--project", "ledger", "--json")).json()["key"]["id"]
    r = await cli("users", "delete", "mallory")
    assert r.rc == 0 and f"deleted API key {key}" in r.out
    assert "ghost" in (await cli("teams", "delete", "ghost")).err
