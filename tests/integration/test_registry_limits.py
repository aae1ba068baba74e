"""Registry limits over real gRPC: every string, count and number bounded on write (with the
field and limit named), and a Watch snapshot cut by bytes so oversized data written before the
limits existed cannot stall every router and the pool."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb
from harness.registry.v1.registry_pb2_grpc import RegistryStub
from sqlalchemy import update

from services.registry import domain as d
from services.registry.models import TeamRow
from services.registry.store import Store
from tests.helpers.registry_server import start_registry
from tests.integration.test_registry_errors import _code, registry  # noqa: F401 (fixture)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MB = 1024 * 1024


def _nested(depth: int) -> struct_pb2.Struct:
    root = struct_pb2.Struct()
    node = root
    for _ in range(depth):
        node = node.fields["a"].struct_value
    node.fields["leaf"].number_value = 1
    return root


def _version(**kw) -> pb.CreateAgentVersionRequest:
    return pb.CreateAgentVersionRequest(
        agent="demo-agent", version=pb.AgentVersion(version="v9", models=["llama-3-8b"], **kw)
    )


def _far_future() -> pb.CreateApiKeyRequest:
    req = pb.CreateApiKeyRequest(user="bob", project="ledger")
    req.expire_time.seconds = 2**62
    return req


def _nan_metadata() -> pb.CreateAgentVersionRequest:
    req = _version()
    req.version.metadata.fields["x"].number_value = float("nan")
    return req


BIG = "x" * MB
CASES = [
    ("CreateTeam", pb.CreateTeamRequest(team=pb.Team(name="big", display_name=BIG)), "display_name"),
    ("CreateProject", pb.CreateProjectRequest(project=pb.Project(name="p", team="finance", display_name=BIG)), "255"),
    ("CreateUser", pb.CreateUserRequest(user=pb.User(name="u", email=BIG)), "email"),
    ("CreateUser", pb.CreateUserRequest(user=pb.User(name="u", roles=["r"] * 33)), "roles"),
    ("SetUserLimits", pb.SetUserLimitsRequest(user="bob", rpm_limit=2**62), "rpm_limit"),
    ("CreateAgent", pb.CreateAgentRequest(agent=pb.Agent(name="a", project="ledger", description=BIG)), "description"),
    ("CreateAgent", pb.CreateAgentRequest(agent=pb.Agent(name="a", project="ledger", slo=pb.SloTargets(ttft_ms=float("inf")))), "finite"),
    ("CreateAgentVersion", _version(tools=["t"] * 65), "tools"),
    ("CreateAgentVersion", _nan_metadata(), "finite"),
    ("CreateAgentVersion", _version(metadata=_nested(20)), "deeper"),
    ("CreateAgentVersion", _version(default_sampling=common_pb2.SamplingParams(temperature=float("nan"))), "temperature"),
    ("CreateAgentVersion", _version(default_sampling=common_pb2.SamplingParams(stop=["</s>", ""])), "default_sampling.stop[1] is empty"),
    ("RegisterModel", pb.RegisterModelRequest(model=pb.Model(name="m", memory_gib=float("inf"))), "memory_gib"),
    ("RegisterModel", pb.RegisterModelRequest(model=pb.Model(name="m", memory_gib=float("nan"))), "memory_gib"),
    ("RegisterModel", pb.RegisterModelRequest(model=pb.Model(name="m", family=BIG)), "family"),
    ("RegisterTool", pb.RegisterToolRequest(tool=pb.Tool(name="t", description=BIG, actions=[pb.ToolAction(name="a", risk=1)])), "description"),
    ("RegisterTool", pb.RegisterToolRequest(tool=pb.Tool(name="t", actions=[pb.ToolAction(name="a", risk=1, cache_ttl_s=2**31 - 1)])), "cache_ttl_s"),
    ("AddPolicy", pb.AddPolicyRequest(rule=pb.PolicyRule(ptype="g", values=["u" * 200, "role:x", "ledger"])), "96"),
    ("CreateApiKey", _far_future(), "expire_time"),
    ("ListTeams", pb.ListTeamsRequest(page=common_pb2.PageRequest(page_token="9" * 30)), "page_token"),
    ("CheckAccess", pb.CheckAccessRequest(subject=BIG, domain="ledger", object="agent:x", action="invoke"), "subject"),
]  # fmt: skip


async def test_every_field_is_bounded_on_write(registry):  # noqa: F811
    stub, _store, admin, _ = registry
    for rpc, request, needle in CASES:
        code, details = await _code(getattr(stub, rpc)(request, metadata=admin))
        assert code == INVALID and needle in details, (rpc, code, details)
        assert len(details) <= 1024


async def test_snapshot_parts_are_bounded_in_bytes(tmp_path, test_auth, mint_token):
    """Five teams with 1 MB display names (written before the limits, straight to SQLite, which
    ignores column widths) once made one 5 MB snapshot message: every watcher got
    RESOURCE_EXHAUSTED from its 4 MiB receive limit, forever."""
    store = Store(f"sqlite:///{tmp_path / 'registry.db'}")
    for i in range(5):
        store.create_team(d.Team(f"big-{i}"))
    with store.engine.begin() as conn:
        conn.execute(update(TeamRow).values(display_name="x" * MB))
    running = await start_registry(store, test_auth)
    admin = (("authorization", f"Bearer {mint_token('alice', 'admin')}"),)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:  # default 4 MiB limit
            call = RegistryStub(channel).Watch(pb.WatchRequest(since_revision=0), metadata=admin)
            teams, sizes = set(), []
            async for message in call:
                assert message.snapshot
                sizes.append(message.ByteSize())
                teams |= {c.key for c in message.changes}
                if not message.more:
                    break
            call.cancel()
        assert teams == {f"big-{i}" for i in range(5)}
        assert len(sizes) == 5 and max(sizes) < 1.1 * MB, sizes
    finally:
        await running.stop(0)
        store.close()
