"""The tool path's stages on fakes (no servers): a tool call runs through the director like a
generation, so budgets settle and the records are written however the call ends."""

from __future__ import annotations

import asyncio

import pytest
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from prometheus_client import CollectorRegistry

from services.common import context as reqctx
from services.common.errors import PermissionDenied, Unavailable
from services.router.budgets import BudgetReservation
from services.router.metrics import RouterMetrics
from services.router.pipeline import Director
from services.router.privacy import AgentRedactors
from services.router.result_cache import MemoryResultCache
from services.router.stages.tool import CallTool, ToolResultCache
from services.router.tool_upstream import Credentials
from services.router.tools import ToolCall, ToolInvoker
from tests.integration.test_router_tools import Events, FakeRegistry, Gate, ledger, rpa_agent


class FakeBudgets:
    """Counts what the tool path reserves and what it settles each reservation at."""

    class Prices:
        def tool_cost(self, tool: str) -> int:
            return 1000

    def __init__(self) -> None:
        self.prices = self.Prices()
        self.reserved: list[str] = []
        self.settled: list[int] = []

    async def reserve_tool(self, subjects, tool: str) -> BudgetReservation:
        self.reserved.append(tool)
        return BudgetReservation()

    async def settle(self, res: BudgetReservation, actual: int) -> None:
        self.settled.append(actual)


def invoker_with(
    answer, *, gate: Gate | None = None, cache=None
) -> tuple[ToolInvoker, Events, CollectorRegistry]:
    """An invoker whose tool answers through `answer(url, args, timeout_s, headers)` (no HTTP)."""
    events, metrics = Events(), CollectorRegistry()
    invoker = ToolInvoker(
        FakeRegistry(ledger("http://tool.invalid")), events, AgentRedactors(),
        gate or Gate(audit_pb2.APPROVAL_STATE_APPROVED), cache or MemoryResultCache(),
        budgets=FakeBudgets(), metrics=RouterMetrics(metrics),
    )  # fmt: skip
    stages = [*invoker.tool_stages()[:-1], CallTool(Credentials(None), invoker.settings, answer)]
    invoker.director = Director(stages, stages[-1], invoker.metrics.stage_errors)
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="rpa", user="alice")))
    return invoker, events, metrics


def tool_records(events: Events) -> list:
    return [e for e in events.audit if e.kind == common_pb2.AUDIT_EVENT_KIND_TOOL_CALL]


def fails(exc: BaseException):
    def answer(url, args, timeout_s, headers):
        raise exc

    return answer


def echo(url, args, timeout_s, headers):
    return {"echo": args, "phone": "13912345678"}


async def test_a_tool_call_that_raises_is_still_recorded_settled_uncharged_and_releases_its_key():
    invoker, events, _ = invoker_with(fails(Unavailable("the tool is down")))
    call = ToolCall("ledger", "write", {"entry": 1}, idempotency_key="k1")
    with pytest.raises(Unavailable, match="the tool is down"):
        await invoker.invoke(call)
    [record] = tool_records(events)
    assert record.status == "UNAVAILABLE" and record.decision == common_pb2.DECISION_ALLOW
    assert events.usage == []  # a failed call is not priced
    assert invoker.settings.budgets.reserved == ["ledger"] and invoker.settings.budgets.settled == [0]
    invoker.director.source.post_json = echo  # the key was released: a retry runs the tool
    again = await invoker.invoke(call)
    assert not again.cached and again.result["echo"] == {"entry": 1}


async def test_a_tool_call_that_breaks_is_recorded_as_internal_and_a_cancelled_one_as_cancelled():
    invoker, events, _ = invoker_with(fails(RuntimeError("bug")))
    with pytest.raises(RuntimeError):
        await invoker.invoke(ToolCall("ledger", "write", {"entry": 1}))
    invoker.director.source.post_json = fails(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await invoker.invoke(ToolCall("ledger", "write", {"entry": 2}))
    assert [r.status for r in tool_records(events)] == ["INTERNAL", "CANCELLED"]
    assert invoker.settings.budgets.settled == [0, 0]


async def test_records_are_written_even_when_a_later_completion_hook_raises():
    class BrokenCache(MemoryResultCache):
        async def put(self, key, entry, ttl_s) -> None:
            raise ConnectionError("cache down")

    invoker, events, metrics = invoker_with(echo, cache=BrokenCache())
    outcome = await invoker.invoke(ToolCall("ledger", "read", {"account": "42"}))
    assert outcome.result["phone"] == "[PHONE]"  # the caller's answer does not depend on the cache
    [record] = tool_records(events)
    assert record.status == "OK" and [u.tool_action for u in events.usage] == ["read"]
    assert invoker.settings.budgets.settled == [1000]
    errors = {"stage": ToolResultCache.name}
    assert metrics.get_sample_value("harness_router_stage_completion_errors_total", errors) == 1


async def test_a_call_outside_the_pins_is_recorded_as_an_authorization_denial_and_reaches_nothing():
    invoker, events, _ = invoker_with(fails(AssertionError("the tool must not be called")))
    with pytest.raises(PermissionDenied, match="may call \\['ledger'\\], not 'crm'"):
        await invoker.invoke(ToolCall("crm", "read"))
    with pytest.raises(PermissionDenied, match="pins ledger@1, not version '2'"):
        invoker.registry.agents["rpa"] = rpa_agent(tools=("ledger@1",))
        await invoker.invoke(ToolCall("ledger", "read", version="2"))
    denials = [(e.kind, e.object, e.action, e.status, e.rule) for e in events.audit]
    kind = common_pb2.AUDIT_EVENT_KIND_AUTHZ_DECISION
    assert denials == [
        (kind, "tool:crm", "read", "PERMISSION_DENIED", "agent version v1 pins ['ledger']"),
        (kind, "tool:ledger@2", "read", "PERMISSION_DENIED", "agent version v1 pins ledger@1"),
    ]
    assert events.usage == [] and invoker.settings.budgets.reserved == []


async def test_a_call_waiting_for_approval_is_recorded_pending_and_reserves_nothing():
    invoker, events, _ = invoker_with(fails(AssertionError("must wait")), gate=Gate())  # stays pending
    outcome = await invoker.invoke(ToolCall("ledger", "delete", {"ledger": "2024"}, approval_wait_s=0.1))
    assert outcome.decision == common_pb2.DECISION_PENDING_APPROVAL and outcome.approval_id == "ap-1"
    [record] = tool_records(events)
    assert record.status == "PENDING" and record.details["approval_id"] == "ap-1"
    assert invoker.settings.budgets.reserved == [] and events.usage == []


async def test_a_fail_closed_outbox_that_cannot_write_refuses_the_call_before_the_tool_runs():
    invoker, events, _ = invoker_with(fails(AssertionError("the tool must not be called")))
    events.failing = True
    with pytest.raises(Unavailable, match="fail-closed"):
        await invoker.invoke(ToolCall("ledger", "write", {"entry": 1}))
    assert events.audit == [] and invoker.settings.budgets.reserved == []
