"""An in-process Router for the router benchmarks (bench/prefix_affinity.py, overload.py, fleet/):
the production core, dispatcher, flow control and scheduler over a small stand-in registry,
fed endpoints by ``_common.PoolStandIn`` (or ``EndpointView.apply``).

The one stand-in is ``FakeRegistry`` (the registry mirror: one agent record per name, every
policy check allowed); audit, usage and the call journal are ``NullEvents``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.common.v1 import common_pb2  # noqa: E402
from harness.registry.v1 import registry_pb2  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from services.router.core import Call, GenerationInput, Router, RouterPolicy  # noqa: E402
from services.router.dispatch import Dispatcher  # noqa: E402
from services.router.flow import FlowController, MemoryRateLimiter  # noqa: E402
from services.router.metrics import RouterMetrics  # noqa: E402
from services.router.result_cache import MemoryResultCache  # noqa: E402
from services.router.scheduling import Scheduler  # noqa: E402
from services.router.triton import TritonPool  # noqa: E402
from services.router.views import AccessDecision, EndpointView  # noqa: E402


@dataclass
class FakeRegistry:
    """The registry mirror's interface: agents by name, one catalog model, every check allowed."""

    agents: dict[str, registry_pb2.Agent]
    model_name: str
    triton_model: str
    context_length: int = 8192

    async def agent(self, name: str) -> registry_pb2.Agent:
        return self.agents[name]

    async def model(self, name: str) -> registry_pb2.Model:
        return registry_pb2.Model(
            name=self.model_name, triton_model=self.triton_model, context_length=self.context_length
        )

    async def user(self, name: str) -> None:
        return None  # no per-user limits in the benchmarks

    async def project_team(self, project: str) -> str:
        return ""

    async def check(self, subject: str, domain: str, obj: str, action: str) -> AccessDecision:
        return AccessDecision(True, "p, bench")


class NullEvents:
    """No audit, usage or durable call journal in the benches (the stages still run): the
    object is its own journal."""

    def journal(self, call) -> NullEvents:
        return self

    def start(self) -> None:
        pass

    progress = finish = start

    def open_id(self) -> str:
        return ""  # no durable entry: the call's records are not deferred past its answer

    def emit_audit(self, event) -> None:
        pass

    def emit_usage(self, event) -> None:
        pass

    def emit_call(self, events, journal) -> None:
        pass

    def check_durable(self) -> None:
        pass


def agent_record(
    name: str, model: str, slo_class: int = common_pb2.SLO_CLASS_INTERACTIVE
) -> registry_pb2.Agent:
    return registry_pb2.Agent(
        name=name,
        project="bench",
        state=common_pb2.AGENT_STATE_ONLINE,
        slo=registry_pb2.SloTargets(slo_class=slo_class),
        versions=[registry_pb2.AgentVersion(version="v1", models=[model])],
    )


@dataclass
class InProcessRouter:
    router: Router
    view: EndpointView
    flow: FlowController
    scheduler: Scheduler
    triton: TritonPool
    channel: grpc.aio.Channel
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)

    async def close(self) -> None:
        await self.triton.close()
        await self.channel.close()


def scheduler_with_default(profile: str, seed: int = 1) -> Scheduler:
    """The packaged profiles.yaml, but every request goes to ``profile`` (a baseline, or the
    packaged 'default'), whatever its SLO class or agent type."""
    raw = yaml.safe_load(Path(REPO / "services/router/scheduling/profiles.yaml").read_text())
    raw["selection"] = {"default": profile}
    return Scheduler.from_mapping(raw, seed=seed)


def build_router(
    registry: FakeRegistry, scheduler: Scheduler, flow: FlowController, *, max_tokens: int
) -> InProcessRouter:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # unused: the view is fed by PoolStandIn/apply
    view = EndpointView(
        channel,
        on_change=flow.capacity_changed,
        own_inflight=scheduler.memory.own,  # as the router wires it
    )
    triton = TritonPool()
    metrics = CollectorRegistry()
    router = Router(
        registry, view, Dispatcher(view, scheduler, flow, triton), NullEvents(), MemoryRateLimiter(),
        MemoryResultCache(), RouterMetrics(metrics),
        RouterPolicy(default_max_tokens=max_tokens, cache_ttl_s=0.0),  # no result cache: every call dispatches
    )  # fmt: skip
    return InProcessRouter(router, view, flow, scheduler, triton, channel, metrics)


async def generate(router: Router, prompt: str, max_tokens: int, timeout_s: float | None = None) -> Call:
    """One Generate through the router core (the caller sets the request context first)."""
    call = Call(GenerationInput(prompt=prompt, max_tokens=max_tokens, timeout_s=timeout_s))
    async for _ in router.run(call):
        pass
    return call
