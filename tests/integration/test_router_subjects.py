"""A token's subject is a user, never a role or an agent: the router asks casbin about
`user:<sub>`, so a token with sub="role:analyst" gets nothing the role may do.

The registry and the router's copy of it are real (mTLS Watch, the demo policy: role:analyst
may invoke demo-agent, bob holds the role); the router core and the tool invoker are the
production code, and the call fails or passes at authorization, before any engine or tool.
"""

from __future__ import annotations

import grpc
import pytest
from harness.registry.v1 import registry_pb2 as pb
from prometheus_client import CollectorRegistry

from services.common import context as reqctx
from services.common.errors import HarnessError, PermissionDenied
from services.router.core import Call, GenerationInput, Router, RouterPolicy
from services.router.dispatch import Dispatcher
from services.router.flow import FlowConfig, FlowController, MemoryRateLimiter
from services.router.metrics import RouterMetrics
from services.router.privacy import AgentRedactors
from services.router.result_cache import MemoryResultCache
from services.router.scheduling import Scheduler
from services.router.tools import ToolCall, ToolInvoker
from services.router.triton import TritonPool
from services.router.views import EndpointView
from tests.integration.test_router_hot_path import Events
from tests.integration.test_router_registry_mirror import eventually, setup  # noqa: F401  (fixture)
from tests.integration.test_router_tools import Gate


@pytest.fixture
async def router(setup):  # noqa: F811
    _, _, mirror = setup
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # no endpoints: nothing gets past admission
    flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
    view = EndpointView(channel, on_change=flow.capacity_changed)
    triton = TritonPool()
    core = Router(
        mirror, view, Dispatcher(view, Scheduler(seed=1), flow, triton), Events(), MemoryRateLimiter(),
        MemoryResultCache(), RouterMetrics(CollectorRegistry()), RouterPolicy(default_max_tokens=8, redaction_key="k"),
    )  # fmt: skip
    yield core
    await triton.close()
    await channel.close()


async def generate_as(router: Router, user: str) -> None:
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="demo-agent", user=user, auth_method="jwt")))
    async for _ in router.run(Call(GenerationInput(prompt="hello", max_tokens=4))):
        pass


@pytest.mark.parametrize("subject", ["role:analyst", "agent:demo-agent"])
async def test_a_token_naming_a_role_or_an_agent_may_not_invoke(router, subject):
    with pytest.raises(PermissionDenied, match=f"user {subject!r} may not invoke agent:demo-agent"):
        await generate_as(router, subject)


async def test_a_real_member_of_the_role_still_may(router):
    try:
        await generate_as(router, "bob")  # bob holds role:analyst in ledger
    except PermissionDenied:
        raise
    except HarnessError:
        pass  # past authorization: no endpoint serves the model in this test


async def test_tool_calls_use_the_same_namespace(setup):  # noqa: F811
    _, stub, mirror = setup
    tool_rule = pb.PolicyRule(
        ptype="p", values=["agent:demo-agent", "ledger", "tool:ledger", "read", "allow"]
    )
    await stub.AddPolicy(pb.AddPolicyRequest(rule=tool_rule))

    async def tool_rule_arrived() -> bool:
        return (await mirror.check("agent:demo-agent", "ledger", "tool:ledger", "read")).allowed

    await eventually(tool_rule_arrived, within_s=5.0)
    invoker = ToolInvoker(mirror, Events(), AgentRedactors(), Gate(), MemoryResultCache())

    async def invoke_as(user: str):
        reqctx.set_current(
            reqctx.new_context(reqctx.Identity(agent="demo-agent", user=user, auth_method="jwt"))
        )
        return await invoker.invoke(ToolCall("ledger", "read", {"account": "1"}))

    with pytest.raises(PermissionDenied, match="user 'role:analyst' may not invoke agent:demo-agent"):
        await invoke_as("role:analyst")
    try:
        await invoke_as("bob")
    except PermissionDenied:
        raise
    except HarnessError:
        pass  # past authorization: the demo tool endpoint does not exist
