"""Tool calls never carry one caller's data to another: the result cache and idempotency keys
are scoped per agent and user and bound to the raw arguments; cached answers are redacted for
the reader; a tool version pin cannot be bypassed. Against a real HTTP tool."""

from __future__ import annotations

import asyncio

import pytest
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common import context as reqctx
from services.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from services.router.privacy import AgentRedactors
from services.router.result_cache import CachedResult, CacheKeys, MemoryResultCache
from services.router.tool_cache import RUNNING
from services.router.tools import ToolCall, ToolInvoker

from .test_router_tools import Events, FakeRegistry, Gate, ToolServer, ledger, rpa_agent


def as_caller(agent: str, user: str) -> None:
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent=agent, user=user)))


@pytest.fixture
def world():
    server = ToolServer()
    registry, events = FakeRegistry(ledger(server.url)), Events()
    registry.agents = {"rpa": rpa_agent(), "raw-rpa": rpa_agent("raw-rpa", pii=False)}
    cache = MemoryResultCache()
    invoker = ToolInvoker(registry, events, AgentRedactors(), Gate(), cache, keys=CacheKeys("secret"))
    as_caller("rpa", "alice")
    yield invoker, server, registry, events
    server.httpd.shutdown()


async def test_a_cached_read_is_never_served_for_other_values_that_redact_alike(world):
    invoker, server, *_ = world
    # Both phone numbers redact to "[PHONE]": a key over redacted arguments would share them.
    first = await invoker.invoke(ToolCall("ledger", "read", {"phone": "13812345678"}))
    second = await invoker.invoke(ToolCall("ledger", "read", {"phone": "13987654321"}))
    assert not first.cached and not second.cached and len(server.calls) == 2
    assert server.calls[1] == ("/read", {"phone": "13987654321"})
    again = await invoker.invoke(ToolCall("ledger", "read", {"phone": "13812345678"}))
    assert again.cached and len(server.calls) == 2


async def test_a_cached_read_is_never_served_to_another_user_or_agent(world):
    invoker, server, *_ = world
    args = {"phone": "13812345678"}
    await invoker.invoke(ToolCall("ledger", "read", args))  # alice through rpa
    as_caller("rpa", "bob")
    assert not (await invoker.invoke(ToolCall("ledger", "read", args))).cached
    as_caller("raw-rpa", "alice")  # another agent, whose policy keeps phone numbers
    raw = await invoker.invoke(ToolCall("ledger", "read", args))
    assert not raw.cached and raw.result["owner_phone"] == "13812345678"
    assert len(server.calls) == 3
    as_caller("rpa", "alice")  # rpa's own entry is still there, redacted for rpa
    hit = await invoker.invoke(ToolCall("ledger", "read", args))
    assert hit.cached and hit.result["owner_phone"] == "[PHONE]" and len(server.calls) == 3


async def test_a_cached_result_is_redacted_for_the_readers_policy_as_it_is_now(world):
    invoker, server, registry, events = world
    as_caller("raw-rpa", "alice")
    args = {"account": "42"}
    assert (await invoker.invoke(ToolCall("ledger", "read", args))).result["owner_phone"] == "13812345678"
    registry.agents["raw-rpa"] = rpa_agent("raw-rpa", pii=True, revision=2)  # the policy now masks phones
    hit = await invoker.invoke(ToolCall("ledger", "read", args))
    assert hit.cached and hit.result["owner_phone"] == "[PHONE]" and len(server.calls) == 1
    record = events.audit[-1]  # the cached answer is audited too, and costs nothing
    assert record.kind == common_pb2.AUDIT_EVENT_KIND_TOOL_CALL and record.details["cached"] is True
    assert "13812345678" not in str(record) and events.usage[-1].cached


async def test_an_idempotency_key_is_per_user_and_bound_to_its_arguments(world):
    invoker, server, *_ = world
    first = await invoker.invoke(ToolCall("ledger", "write", {"entry": 1}, idempotency_key="k1"))
    as_caller("rpa", "bob")  # the same key is bob's own: his call runs and gets his result
    bobs = await invoker.invoke(ToolCall("ledger", "write", {"entry": 2}, idempotency_key="k1"))
    assert not bobs.cached and bobs.result["echo"] == {"entry": 2} and len(server.calls) == 2
    as_caller("raw-rpa", "bob")  # and another agent's
    assert not (await invoker.invoke(ToolCall("ledger", "write", {"entry": 2}, idempotency_key="k1"))).cached
    as_caller("rpa", "alice")
    with pytest.raises(FailedPrecondition, match="idempotency key 'k1' was first used for another"):
        await invoker.invoke(ToolCall("ledger", "write", {"entry": 2}, idempotency_key="k1"))
    with pytest.raises(FailedPrecondition, match="idempotency key 'k1'"):
        await invoker.invoke(ToolCall("ledger", "read", {"entry": 1}, idempotency_key="k1"))
    retried = await invoker.invoke(ToolCall("ledger", "write", {"entry": 1}, idempotency_key="k1"))
    assert retried.cached and retried.result == first.result and len(server.calls) == 3
    with pytest.raises(InvalidArgument, match="the limit is 256"):
        await invoker.invoke(ToolCall("ledger", "write", {"entry": 1}, idempotency_key="k" * 257))


async def test_a_duplicate_sent_while_the_first_runs_waits_for_its_result(world):
    invoker, server, *_ = world
    call = ToolCall("ledger", "slow", {"entry": 1}, idempotency_key="k2")
    first, second = await asyncio.gather(invoker.invoke(call), invoker.invoke(call))
    assert len(server.calls) == 1 and first.result == second.result
    assert sorted([first.cached, second.cached]) == [False, True]


async def test_a_failed_call_releases_its_key_and_a_stale_claim_is_waited_for_boundedly(world):
    invoker, server, *_ = world
    for _ in range(2):  # the second one runs again: the first did not keep the key
        with pytest.raises(Unavailable, match="the tool failed"):
            await invoker.invoke(ToolCall("ledger", "fail", {"n": 1}, idempotency_key="k3"))
    assert len(server.calls) == 2
    invoker.settings.default_approval_wait_s = invoker.settings.http_timeout_s = 0.05
    scope = invoker.results.scope("rpa", "alice", "ledger", "1", "write", {"n": 2}, "k4")
    assert await invoker.results.cache.add(
        scope.idempotency_key, CachedResult("", 0, 0, RUNNING, "", scope.binding), 60
    )
    with pytest.raises(Unavailable, match="idempotency key 'k4' is still running"):
        await invoker.invoke(ToolCall("ledger", "write", {"n": 2}, idempotency_key="k4"))
    assert len(server.calls) == 2


def v3(url: str) -> registry_pb2.Tool:
    """The ledger's next major version: delete needs no approval there."""
    act = registry_pb2.ToolAction
    return registry_pb2.Tool(
        name="ledger",
        version="3",
        endpoint=url + "/v3",
        actions=[act(name="delete", risk=common_pb2.RISK_CLASS_DELETE)],
    )


async def test_a_request_for_another_version_than_the_pin_is_refused_and_audited(world):
    invoker, server, registry, events = world
    registry.other_versions = [v3(server.url)]
    registry.agents["rpa"] = rpa_agent(tools=("ledger@1",))
    for version in ("3", "3.x"):
        with pytest.raises(PermissionDenied, match=f"pins ledger@1, not version '{version}'"):
            await invoker.invoke(ToolCall("ledger", "delete", {"ledger": "2024"}, version=version))
        denied = events.audit[-1]
        assert denied.kind == common_pb2.AUDIT_EVENT_KIND_AUTHZ_DECISION
        assert denied.decision == common_pb2.DECISION_DENY and denied.object == f"tool:ledger@{version}"
        assert denied.action == "delete" and "ledger@1" in denied.rule
    assert server.calls == []
    pinned = await invoker.invoke(ToolCall("ledger", "read", {"a": 1}, version="1"))  # the pin itself is fine
    assert pinned.decision == common_pb2.DECISION_ALLOW and server.calls == [("/read", {"a": 1})]


async def test_a_bare_pin_follows_the_newest_version_and_refuses_others(world):
    invoker, server, registry, _ = world
    registry.other_versions = [v3(server.url)]
    with pytest.raises(PermissionDenied, match="pins ledger at its newest version \\(3\\), not version '1'"):
        await invoker.invoke(ToolCall("ledger", "read", {"a": 1}, version="1"))
    assert server.calls == []
