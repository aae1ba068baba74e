"""In-memory stand-ins for the router's registry copy and its event shipper (unit and
integration tests of the request path)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.router.call_journal import CallJournal
from services.router.engine import EngineRequest
from services.router.events import emit_each
from services.router.outbox import Outbox
from services.router.scheduling import SchedulingRequest
from services.router.views import AccessDecision

MODEL, TRITON_MODEL = "llama-3-8b", "llama-3-8b-instruct"
EMBED_MODEL, EMBED_TRITON_MODEL, EMBED_DIMENSIONS = "minilm", "all-minilm-l6-v2", 384


def embedding_model(context_length: int = 512) -> registry_pb2.Model:
    return registry_pb2.Model(
        name=EMBED_MODEL, triton_model=EMBED_TRITON_MODEL, kind=registry_pb2.MODEL_KIND_EMBEDDING,
        dimensions=EMBED_DIMENSIONS, context_length=context_length,
    )  # fmt: skip


@dataclass
class FakeRegistry:
    agent_record: registry_pb2.Agent
    context_length: int = 8192
    denied: set[str] = field(default_factory=set)
    users: dict[str, registry_pb2.User] = field(default_factory=dict)
    teams: dict[str, str] = field(default_factory=dict)  # project -> owning team
    family: str = ""  # the model's family (its chat template; "" is the neutral one)
    models: dict[str, registry_pb2.Model] = field(default_factory=dict)  # besides MODEL

    async def agent(self, name: str) -> registry_pb2.Agent:
        return self.agent_record

    async def user(self, name: str) -> registry_pb2.User | None:
        return self.users.get(name)

    async def project_team(self, project: str) -> str:
        return self.teams.get(project, "")

    async def model(self, name: str) -> registry_pb2.Model:
        if name in self.models:
            return self.models[name]
        return registry_pb2.Model(
            name=MODEL, triton_model=TRITON_MODEL, context_length=self.context_length, family=self.family
        )

    async def check(self, subject: str, domain: str, obj: str, action: str) -> AccessDecision:
        return AccessDecision(obj not in self.denied, "p, test")


class Events:
    def __init__(self) -> None:
        self.audit, self.usage = [], []
        self.outbox = Outbox(":memory:")  # calls under way (the journal)

    def journal(self, call) -> CallJournal:
        return CallJournal(self.outbox, call, fail_closed=False)

    def emit_audit(self, event) -> None:
        self.audit.append(event)

    def emit_usage(self, event) -> None:
        self.usage.append(event)

    def emit_call(self, events, journal) -> None:
        emit_each(self, events, journal)

    def check_durable(self) -> None:
        pass


def agent(
    slo: int = common_pb2.SLO_CLASS_INTERACTIVE,
    rpm: int = 0,
    *,
    pii: bool = False,
    state: int = common_pb2.AGENT_STATE_ONLINE,
) -> registry_pb2.Agent:
    """Agent a1 of project p pinning MODEL; `pii` masks phone numbers in its prompts and answers."""
    policy = registry_pb2.DataPolicy()
    if pii:
        policy.pii.add(kind="phone", mode=registry_pb2.MASK_MODE_MASK)
    return registry_pb2.Agent(
        name="a1",
        project="p",
        state=state,
        slo=registry_pb2.SloTargets(slo_class=slo),
        versions=[registry_pb2.AgentVersion(version="v1", models=[MODEL])],
        rpm_limit=rpm,
        data_policy=policy,
    )


class DispatchCall:
    """The parts of a Call the dispatcher reads and fills in (a fixed model and prompt)."""

    slo = None
    endpoint = None
    journal = None
    failed_over_from = ""
    gpu_seconds = 0.0
    queue_s = 0.0

    def __init__(self, model: str, prompt: str = "p", timeout_s: float | None = 60.0) -> None:
        self.model, self.prompt = model, prompt
        self.inp = type("Inp", (), {"timeout_s": timeout_s})()
        self.started = time.perf_counter()

    def scheduling_request(self) -> SchedulingRequest:
        return SchedulingRequest(model=self.model, prompt=self.prompt)

    def engine_request(self) -> EngineRequest:
        return EngineRequest(model=self.model, prompt=self.prompt, max_tokens=4)
