"""One call through the router's request path: what a front door asks for (`GenerationInput`),
what every stage reads and fills in on the way (`Call`), and what the path streams back
(`Chunk`). Front doors build the input from their protocol, run the pipeline, and read the
chunks and the finished call; stages never see gRPC or HTTP.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common.context import RequestContext
from services.router import records
from services.router.chat import ChatMessage, ChatTemplate, ToolChoice, ToolSpec
from services.router.engine import EngineChunk, EngineRequest
from services.router.flow import SloClass
from services.router.scheduling import Candidate, SchedulingRequest

if TYPE_CHECKING:
    from services.router.budgets import BudgetReservation
    from services.router.call_journal import CallJournal
    from services.router.flow import Reservation
    from services.router.privacy import OutputRedaction
    from services.router.result_cache import CachedResult
    from services.router.stages.relay import RelayLink
    from services.router.tool_cache import ToolScope


@dataclass(frozen=True)
class GenerationInput:
    prompt: str = ""
    messages: tuple[ChatMessage | tuple[str, str], ...] = ()  # (role, content) pairs or ChatMessage
    max_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    model: str = ""
    timeout_s: float | None = None  # time left before the caller's deadline (None: none)
    bypass_cache: bool = False  # skip the exact-result cache (the fresh result refreshes it)
    tools: tuple[ToolSpec, ...] = ()  # functions the model may call (rendered by the chat template)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    min_chunk_interval_ms: int = 0  # merge text deltas sent closer than this (chunk_interval.py); 0: never


@dataclass(frozen=True)
class EmbeddingInput:
    """What an embedding call asks for: one vector per text, in order."""

    inputs: tuple[str, ...]
    model: str = ""  # empty: the first embedding model the agent version pins
    dimensions: int = 0  # 0: the model's own length (no other length is served)
    timeout_s: float | None = None  # time left before the caller's deadline (None: none)


@dataclass(frozen=True)
class ToolCall:
    """What a governed tool call asks for: one action of a tool the agent version pins."""

    tool: str
    action: str
    arguments: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    idempotency_key: str = ""
    approval_wait_s: float = 0.0  # 0 = the router's default


@dataclass
class ToolRun:
    """A tool call's own state (`Call.tool`), filled in by the tool stages (stages/tool.py)."""

    tool: registry_pb2.Tool | None = None
    action: registry_pb2.ToolAction | None = None
    risk: str = ""  # the action's risk class: the casbin action the agent needs on the tool
    redactor: Any = None  # the agent's data policy (None: nothing to redact)
    logged_args: dict[str, Any] = field(default_factory=dict)  # the arguments, redacted
    scope: ToolScope | None = None  # result cache / idempotency identity
    raw: dict[str, Any] | None = None  # the answer as the tool (or the cache) gave it
    result: dict[str, Any] | None = None  # the answer, redacted for the caller
    cached: bool = False  # answered from the result cache or an idempotency key
    decision: int | None = None  # set once the call must leave a tool-call record
    pending: bool = False  # waits for an approval: nothing ran
    approval_id: str = ""
    called_ok: bool = False  # the tool answered (the call is priced)
    duration_s: float = 0.0


@dataclass(frozen=True)
class Chunk:
    """A piece of the answer. `final` marks the last one (it may carry text or be empty);
    `output_tokens` is the engine's count of output tokens so far (0 when not known yet)."""

    text: str
    final: bool = False
    output_tokens: int = 0


class AfterAnswer:
    """Work a front door runs once the caller has the whole answer: the stages' releases, and
    for a call with a durable journal entry their completions too (pipeline.py). Work deferred
    after that (a stream closed only later) is run at once by whoever defers it."""

    def __init__(self) -> None:
        self._jobs: list[Callable[[], Awaitable[None]]] = []
        self._open = True

    @property
    def pending(self) -> bool:
        return bool(self._jobs)

    def defer(self, job: Callable[[], Awaitable[None]]) -> bool:
        """Keeps `job` for `run`; False once `run` has run (the caller must run it itself)."""
        if self._open:
            self._jobs.append(job)
        return self._open

    async def run(self) -> None:
        """Runs the jobs in order (each catches and counts its own errors)."""
        try:
            for job in self._jobs:  # one deferred while another runs is in the list too
                await job()
        finally:
            self._open = False


@dataclass
class Call:
    """The state of one call; each stage reads what earlier stages filled in and adds its part."""

    inp: GenerationInput | EmbeddingInput | ToolCall
    ctx: RequestContext | None = None
    # Makes the id an engine sees unique to this call: the request id may be the caller's own
    # (x-request-id), and engines key their running requests by it (vLLM refuses a second one
    # "already running", and aborts by id), so another caller could name a call in flight.
    engine_nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    started: float = field(default_factory=time.perf_counter)
    # A front door that runs the stages' `release` hooks (and a journaled call's completions)
    # once the caller has the whole answer puts one here; the director defers the work to it
    # (None: it runs at the end).
    after_answer: AfterAnswer | None = None
    # ResolveAgent
    agent: registry_pb2.Agent | None = None
    agent_version: str = ""
    version: registry_pb2.AgentVersion | None = None  # the agent's record of that version
    pinned: tuple[str, ...] = ()
    team: str = ""
    model: str = ""  # catalog name
    catalog: registry_pb2.Model | None = None
    rule: str = ""  # the casbin rule that let the user invoke the agent
    audited: bool = False  # a refusal already wrote its own audit record (authorization)
    # Validate / Redact
    template: ChatTemplate | None = None  # the model family's chat template (messages only)
    prompt: str = ""
    max_tokens: int = 0
    prompt_tokens: int = 0
    slo: SloClass = SloClass.INTERACTIVE
    redactions: dict[str, int] = field(default_factory=dict)  # PII kind -> count (prompt + output)
    texts: tuple[str, ...] = ()  # an embedding call's inputs, validated and redacted
    text_tokens: tuple[int, ...] | None = None  # the engine's token count of each input, if given
    output: OutputRedaction | None = None
    # RateAdmit / BudgetReserve
    rate_hold: Reservation | None = None
    budget_hold: BudgetReservation | None = None
    gpu_cap_s: float | None = None  # the GPU share charged is bounded at admission
    cost_micro_usd: int = 0  # what the budgets settled (0 without budgets or when not charged)
    # CacheCoalesce
    cached: str = ""  # "hit" (result cache) or "coalesced" (shared an identical in-flight call)
    answer: CachedResult | None = None  # a cached answer: Dispatch streams it instead of an engine
    cache_key: str = ""
    cache_lead: asyncio.Future | None = None  # this call leads its key: followers wait for it
    # Journal: the call's start is durable; its records get these ids (see call_journal.py)
    journal: CallJournal | None = None
    relay: RelayLink | None = None  # the ext_proc path: the front door's side of the relay
    tool: ToolRun | None = None  # a tool call's own state (the tool path only)
    audit_id: str = ""
    usage_id: str = ""
    # Dispatch
    dispatched: bool = False  # got as far as the Dispatch stage
    reached_backend: bool = False
    endpoint: Candidate | None = None
    gpu_type: str = ""
    queue_s: float = 0.0
    failed_over_from: str = ""
    shed: bool = False  # flow control refused it (queue full, shed for higher priority, max wait)
    # GPU time on the engine divided by the requests sharing the endpoint when it was
    # dispatched (itself included). An estimate: a batch shares one GPU.
    gpu_seconds: float = 0.0
    # Outcome
    input_tokens: int = 0
    output_tokens: int = 0
    usage_estimated: bool = False  # the engine gave no counts: they were estimated from text
    finish_reason: int = common_pb2.FINISH_REASON_UNSPECIFIED
    status: str = "OK"
    text_parts: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None  # an embedding call's answer: float32 [len(texts), D]
    first_at: float = 0.0
    last_at: float = 0.0
    ended_at: float = 0.0

    # --- derived -------------------------------------------------------------------------
    @property
    def request_id(self) -> str:
        return self.ctx.request_id if self.ctx else ""

    @property
    def journaled(self) -> bool:
        """Whether the call's start is durably in the journal (it was placed on an endpoint)."""
        return self.journal is not None and bool(self.journal.open_id())

    @property
    def engine_request_id(self) -> str:
        """The id engines get: the request id (so their logs still say which call) and this
        call's own nonce."""
        return f"{self.request_id}-{self.engine_nonce}"

    @property
    def trace_id(self) -> str:
        return self.ctx.trace_id if self.ctx else ""

    @property
    def frontdoor(self) -> str:
        return self.ctx.frontdoor if self.ctx else ""

    @property
    def agent_name(self) -> str:
        """The agent once the registry knows it (a bounded metrics label), else ""."""
        return self.agent.name if self.agent is not None else ""

    @property
    def slo_class(self) -> str:
        return self.slo.name.lower()

    @property
    def deployment(self) -> str:
        return f"{self.model}@{self.endpoint.name}" if self.endpoint is not None else ""

    @property
    def embedding(self) -> bool:
        return isinstance(self.inp, EmbeddingInput)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def e2e_ms(self) -> float:
        return ((self.ended_at or time.perf_counter()) - self.started) * 1000

    @property
    def ttft_ms(self) -> float:
        return (self.first_at - self.started) * 1000 if self.first_at else 0.0

    @property
    def tbt_ms(self) -> float:
        pieces = len(self.text_parts)
        return (self.last_at - self.first_at) * 1000 / (pieces - 1) if pieces > 1 else 0.0

    @property
    def queue_ms(self) -> float:
        return self.queue_s * 1000

    @property
    def charged(self) -> bool:
        """Whether the call is billed: a backend worked for it (not a result-cache answer)."""
        return self.reached_backend and not self.cached

    @property
    def charged_gpu_s(self) -> float:
        """The GPU share billed: what dispatch measured, up to the bound set at admission."""
        if not self.charged:
            return 0.0
        return self.gpu_seconds if self.gpu_cap_s is None else min(self.gpu_seconds, self.gpu_cap_s)

    # --- what the source of the answer records ---------------------------------------------
    def take(self, chunk: EngineChunk) -> Chunk:
        """Records an engine chunk's counts (the engine's own, else estimates) and returns the
        pipeline's chunk for it."""
        self.reached_backend = True
        if chunk.input_tokens is not None:
            self.input_tokens = chunk.input_tokens
        if chunk.output_tokens is not None:
            self.output_tokens = max(self.output_tokens, chunk.output_tokens)
        self.usage_estimated = self.usage_estimated or chunk.estimated
        return Chunk(chunk.text, chunk.final, self.output_tokens)

    def ended_normally(self) -> None:
        """The answer is complete: LENGTH when it used every token it could, else STOP."""
        length = self.output_tokens >= self.max_tokens
        self.finish_reason = common_pb2.FINISH_REASON_LENGTH if length else common_pb2.FINISH_REASON_STOP

    # --- what other parts need, built from the call in one place ------------------------------
    def facts(self, status: str = "") -> records.CallFacts:
        """What records say of the call; `status` in place of the call's own (the journal's
        ABORTED twin)."""
        agent = self.agent
        name = agent.name if agent is not None else (self.ctx.identity.agent if self.ctx else "")
        tool = self.tool.tool if self.tool is not None else None
        return records.CallFacts(
            self.ctx, name, self.agent_version, agent.project if agent is not None else "", self.model,
            self.deployment, self.gpu_type, status=status or self.status, rule=self.rule, team=self.team,
            event_id=self.audit_id, usage_id=self.usage_id,
            tool=f"{tool.name}@{tool.version}" if tool is not None else "",
        )  # fmt: skip

    def engine_request(self) -> EngineRequest:
        inp = self.inp
        return EngineRequest(
            model=self.catalog.triton_model if self.catalog else self.model,
            prompt=self.prompt,
            max_tokens=self.max_tokens,
            temperature=inp.temperature,
            top_p=inp.top_p,
            top_k=inp.top_k,
            seed=inp.seed,
            stop=inp.stop,
            request_id=self.engine_request_id,
        )

    def scheduling_request(self) -> SchedulingRequest:
        agent = self.agent
        agent_type = common_pb2.AgentType.Name(agent.type) if agent is not None and agent.type else ""
        return SchedulingRequest(
            model=self.catalog.triton_model if self.catalog else self.model,
            agent=agent.name if agent is not None else "",
            agent_type=agent_type.removeprefix("AGENT_TYPE_").lower().replace("_", "-"),
            slo_class=self.slo_class,
            session_id=self.ctx.session_id if self.ctx else "",
            prompt=self.prompt,
        )
