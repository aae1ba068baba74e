"""The router's Generate path (knows nothing of gRPC servers).

identify -> resolve agent version -> authorize (user may invoke the agent; the agent may use
the model) -> validate against the model (context length) -> admit (RPM/TPM limits) ->
result cache / coalescing (deterministic requests) -> schedule, queue if saturated, dispatch
with one failover (dispatch.py) -> record audit, usage and metrics.
Redaction (security issue) runs before admission; budgets (budgets/) reserve the maximum cost
after the rate limits and settle the actual cost with them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common import context as reqctx
from services.common.access import agent_subject, subject_label, user_subject
from services.common.errors import (
    FailedPrecondition,
    HarnessError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from services.common.registry_mirror import RegistryMirror
from services.router import records
from services.router.budgets import BudgetEnforcer, BudgetReservation, Subjects
from services.router.dispatch import Dispatcher, DispatchInfo
from services.router.events import EventShipper
from services.router.flow import RateLimiter, RateLimits, SloClass
from services.router.metrics import RouterMetrics
from services.router.privacy import AgentRedactors
from services.router.produce import Producer
from services.router.redaction_workers import RedactionWorkers
from services.router.result_cache import CacheKeys, ResultCache
from services.router.scheduling import SchedulingRequest
from services.router.triton import TritonRequest
from services.router.views import AccessDecision, EndpointView


@dataclass(frozen=True)
class GenerationInput:
    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    max_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    model: str = ""
    timeout_s: float | None = None  # time left before the caller's deadline (None: none)
    bypass_cache: bool = False  # skip the exact-result cache (the fresh result refreshes it)


@dataclass
class GenerationResult:
    """Filled as the generation runs; complete once the final chunk was yielded."""

    request_id: str = ""
    agent: str = ""  # once the registry knows it (a metrics label)
    agent_version: str = ""
    model: str = ""
    deployment: str = ""
    finish_reason: int = common_pb2.FINISH_REASON_UNSPECIFIED
    input_tokens: int = 0
    output_tokens: int = 0
    ttft_ms: float = 0.0
    tbt_ms: float = 0.0
    e2e_ms: float = 0.0
    queue_ms: float = 0.0
    slo_class: str = ""
    cached: str = ""  # "hit" (result cache) or "coalesced" (shared an identical in-flight call)
    # Set before the last delta is yielded when the producer knows it is the last (a cached
    # answer, or the engine's final response carried text): a front door can mark it final.
    complete: bool = False
    redactions: dict[str, int] = field(default_factory=dict)  # PII kind -> count (prompt + output)
    text_parts: list[str] = field(default_factory=list)


MAX_PROMPT_CHARS = 1_000_000


def render_prompt(inp: GenerationInput) -> str:
    if bool(inp.prompt) == bool(inp.messages):
        raise InvalidArgument("set exactly one of `prompt` or `messages`")
    if inp.prompt:
        return inp.prompt
    # A neutral template; per-model chat templates come with the model catalog later.
    return "".join(f"<|{role}|>\n{content}\n" for role, content in inp.messages) + "<|assistant|>\n"


def pick_version(agent: registry_pb2.Agent) -> str:
    weights = [(t.version, t.weight) for t in agent.traffic if t.weight > 0]
    if not weights:
        if not agent.versions:
            raise FailedPrecondition(f"agent {agent.name!r} has no versions; add one in the registry")
        return agent.versions[-1].version
    return random.choices([v for v, _ in weights], weights=[w for _, w in weights])[0]


CHARS_PER_TOKEN = 4  # prompt size estimate for admission; the engine reports the real count


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def check_context(prompt_tokens: int, max_tokens: int, context: int, model: str) -> None:
    if context and prompt_tokens + max_tokens > context:
        raise InvalidArgument(
            f"prompt (~{prompt_tokens} tokens at {CHARS_PER_TOKEN} characters per token) plus max_tokens "
            f"{max_tokens} exceeds model {model!r}'s context of {context} tokens"
        )


def _enum_label(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower().replace("_", "-") if value else ""


@dataclass(frozen=True)
class RouterPolicy:
    """Tunables of the hot path (built from the router's config)."""

    default_max_tokens: int = 256
    cache_ttl_s: float = 300.0  # result cache TTL; 0 disables the cache
    redaction_key: str = ""  # HMAC key of HASH-mode redaction (shared by every router replica)
    redaction_workers: int = 1  # processes that redact large inputs off the event loop


def require_caller(ident) -> None:
    """A generation needs both an agent (its certificate) and a user (a token or API key)."""
    if not ident.agent:
        raise Unauthenticated(
            "no agent identity: call through the Harness front door with an agent client certificate"
        )
    if not ident.user:
        raise Unauthenticated("no user credentials: send 'authorization: Bearer <jwt>' or 'x-api-key'")


class Router:
    def __init__(
        self,
        registry: RegistryMirror,
        endpoints: EndpointView,
        dispatcher: Dispatcher,
        events: EventShipper,
        limiter: RateLimiter,
        cache: ResultCache,
        metrics: RouterMetrics,
        policy: RouterPolicy = RouterPolicy(),
        budgets: BudgetEnforcer | None = None,
    ) -> None:
        self.registry = registry
        self.endpoints = endpoints
        self.dispatcher = dispatcher
        self.events = events
        self.limiter = limiter
        keys = CacheKeys(policy.redaction_key)
        self.producer = Producer(dispatcher, cache, metrics, policy.cache_ttl_s, keys)
        self.redactors = AgentRedactors(policy.redaction_key, RedactionWorkers(policy.redaction_workers))
        self.metrics = metrics
        self.policy = policy
        self.budgets = budgets

    async def generate(self, inp: GenerationInput, result: GenerationResult) -> AsyncIterator[str]:
        """Yields text deltas; `result` holds the summary when the iterator ends normally."""
        outcome = "INTERNAL"
        try:
            async for delta in self._generate(inp, result):
                yield delta
            outcome = "OK"
        except HarnessError as exc:
            outcome = exc.code.name
            raise
        except BaseException as exc:
            outcome = "CANCELLED" if isinstance(exc, GeneratorExit | asyncio.CancelledError) else "INTERNAL"
            raise
        finally:
            self.metrics.requests.labels(result.agent, outcome, reqctx.current().frontdoor).inc()

    async def _generate(self, inp: GenerationInput, result: GenerationResult) -> AsyncIterator[str]:
        ctx = reqctx.current()
        ident = ctx.identity
        start = time.perf_counter()
        result.request_id = ctx.request_id
        require_caller(ident)
        prompt = render_prompt(inp)
        if not prompt.strip():
            raise InvalidArgument("the prompt is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        if inp.max_tokens < 0 or inp.temperature < 0 or not 0 <= inp.top_p <= 1 or inp.top_k < 0:
            raise InvalidArgument(
                "sampling: max_tokens, temperature and top_k must be >= 0 and top_p in [0, 1]"
            )

        agent = await self.registry.agent(ident.agent)
        result.agent = agent.name
        if agent.state != common_pb2.AGENT_STATE_ONLINE:
            state = common_pb2.AgentState.Name(agent.state).removeprefix("AGENT_STATE_").lower()
            raise FailedPrecondition(
                f"agent {agent.name!r} is {state}, not online; an operator sets it online with "
                f"`harness agents state {agent.name} online`"
            )
        if ident.project and ident.project != agent.project:
            raise PermissionDenied(
                f"this API key is scoped to project {ident.project!r}, not {agent.project!r}"
            )
        version_label = pick_version(agent)
        version = next(v for v in agent.versions if v.version == version_label)
        model_name = inp.model or (version.models[0] if version.models else "")
        if not model_name:
            raise FailedPrecondition(f"agent {agent.name!r} version {version_label} pins no model")
        if model_name not in version.models:
            # Triton clients name the backend model (e.g. "llama-3-8b-instruct"): map it back.
            model_name = await self._catalog_name(version.models, model_name)
        if model_name not in version.models:
            raise PermissionDenied(
                f"agent {agent.name!r} version {version_label} may use {list(version.models)}, not {model_name!r}"
            )
        team = await self.registry.project_team(agent.project)
        facts = records.CallFacts(ctx, agent.name, version_label, agent.project, model=model_name, team=team)
        decision = await self._authorize(facts, user_subject(ident.user), f"agent:{agent.name}")
        await self._authorize(facts, agent_subject(agent.name), f"model:{model_name}")

        catalog_model = await self.registry.model(model_name)
        max_tokens = inp.max_tokens or version.default_sampling.max_tokens or self.policy.default_max_tokens
        context = catalog_model.context_length
        check_context(estimate_tokens(prompt), max_tokens, context, model_name)  # before redaction's work
        # Redact before anything else sees the prompt: the model, the cache key, the log.
        prompt, output = await self.redactors.prompt(agent, prompt, result.redactions)
        prompt_tokens = estimate_tokens(prompt)
        check_context(prompt_tokens, max_tokens, context, model_name)  # hash mode lengthens values
        slo = SloClass.from_proto(agent.slo.slo_class)
        result.slo_class = slo.name.lower()
        result.agent_version, result.model = version_label, model_name
        labels = (agent.name, model_name, result.slo_class)
        user = await self.registry.user(ident.user)  # None: a JWT subject the registry does not list
        limits = RateLimits(
            agent_rpm=agent.rpm_limit,
            agent_tpm=agent.tpm_limit,
            user_rpm=user.rpm_limit if user else 0,
            user_tpm=user.tpm_limit if user else 0,
        )
        self.events.check_durable()
        reservation = await self.limiter.admit(agent.name, ident.user, limits, prompt_tokens + max_tokens)
        budget_hold = BudgetReservation()
        # The GPU share charged is bounded at admission (see budgets.GpuTimeEstimate).
        gpu_cap_s = self.budgets.gpu_bound_s(model_name, prompt_tokens + max_tokens) if self.budgets else None
        if self.budgets is not None:
            try:
                who = Subjects(ident.user, team, agent.project, agent.name)
                budget_hold = await self.budgets.reserve(who, model_name, prompt_tokens, max_tokens)
            except BaseException:
                await self.limiter.settle(reservation, 0, refund_request=True)
                raise

        request = TritonRequest(
            model=catalog_model.triton_model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=inp.temperature,
            top_p=inp.top_p,
            top_k=inp.top_k,
            seed=inp.seed,
            stop=inp.stop,
            request_id=ctx.request_id,
        )
        sched_request = SchedulingRequest(
            model=catalog_model.triton_model,
            agent=agent.name,
            agent_type=_enum_label(common_pb2.AgentType, agent.type, "AGENT_TYPE_"),
            slo_class=result.slo_class,
            session_id=ctx.session_id,
            prompt=prompt,
        )
        info = DispatchInfo()
        status, reached_backend = "OK", False
        first_at = last_at = 0.0
        pieces = 0
        try:
            deltas = self.producer.stream(
                request, sched_request, slo, inp.timeout_s, info, result, output,
                user=ident.user, bypass_cache=inp.bypass_cache,
            )  # fmt: skip
            async for delta in deltas:
                reached_backend = True
                if not pieces and info.endpoint is not None:  # known to a front door's headers
                    result.deployment = f"{model_name}@{info.endpoint.name}"
                now = time.perf_counter()
                first_at = first_at or now
                last_at = now
                pieces += 1
                result.text_parts.append(delta)
                yield delta
            reached_backend = True
            result.finish_reason = (
                common_pb2.FINISH_REASON_LENGTH
                if result.output_tokens >= request.max_tokens
                else common_pb2.FINISH_REASON_STOP
            )
        except HarnessError as exc:
            status = exc.code.name
            raise
        except BaseException:
            status = "CANCELLED"
            raise
        finally:
            end = time.perf_counter()
            result.e2e_ms = (end - start) * 1000
            result.ttft_ms = (first_at - start) * 1000 if first_at else 0.0
            result.tbt_ms = (last_at - first_at) * 1000 / (pieces - 1) if pieces > 1 else 0.0
            result.queue_ms = info.queue_s * 1000
            if info.endpoint is not None:
                result.deployment = f"{model_name}@{info.endpoint.name}"
            self.metrics.observe_call(
                labels, result.e2e_ms, result.ttft_ms, result.tbt_ms, info.queue_s, info.shed,
                (result.input_tokens, result.output_tokens), result.redactions,
            )  # fmt: skip
            await self.limiter.settle(
                reservation,
                result.input_tokens + result.output_tokens if reached_backend else 0,
                refund_request=not reached_backend,
            )
            gpu_type = self.endpoints.gpu_type(info.endpoint.name) if info.endpoint else ""
            # What the budget settles and what the usage event reports agree, so the ledger and
            # the counters match: nothing for a refused call or a result-cache answer (no
            # backend worked for it), else tokens and the GPU share up to its admission bound.
            charged = reached_backend and not result.cached
            gpu_s = 0.0
            if charged:
                gpu_s = info.gpu_seconds if gpu_cap_s is None else min(info.gpu_seconds, gpu_cap_s)
            if self.budgets is not None:
                tokens = result.input_tokens + result.output_tokens
                if charged:  # learn from the real share, not the capped one
                    self.budgets.gpu.observe(model_name, tokens, info.gpu_seconds)
                actual = (result.input_tokens, result.output_tokens, gpu_type, gpu_s)
                await self.budgets.settle(
                    budget_hold, self.budgets.cost(model_name, *actual) if charged else 0
                )
            self._record(
                records.CallFacts(
                    ctx, agent.name, version_label, agent.project, model_name, result.deployment, gpu_type,
                    status=status, rule=decision.rule, team=team,
                ),
                result, gpu_s,
            )  # fmt: skip

    async def _catalog_name(self, pinned, name: str) -> str:
        for candidate in pinned:
            try:
                if (await self.registry.model(candidate)).triton_model == name:
                    return candidate
            except NotFound:
                continue
        return name

    async def allowed_models(self) -> list[registry_pb2.Model]:
        """Catalog models the calling agent's current versions pin and its policy allows."""
        ident = reqctx.current().identity
        if not ident.agent:
            raise Unauthenticated("no agent identity: call with an agent client certificate")
        agent = await self.registry.agent(ident.agent)
        names = dict.fromkeys(m for v in agent.versions for m in v.models)
        out = []
        for name in names:
            decision = await self.registry.check(
                f"agent:{agent.name}", agent.project, f"model:{name}", "invoke"
            )
            if decision.allowed:
                try:
                    out.append(await self.registry.model(name))
                except NotFound:
                    continue
        return out

    async def _authorize(self, facts: records.CallFacts, subject: str, obj: str) -> AccessDecision:
        decision = await self.registry.check(subject, facts.project, obj, "invoke")
        if not decision.allowed:
            denied = records.CallFacts(**{**facts.__dict__, "rule": decision.rule})
            self.events.emit_audit(records.authz_denied_event(denied, obj))
            who = "user" if not subject.startswith("agent:") else "agent"
            self.metrics.authz_denials.labels(facts.agent, who).inc()
            raise PermissionDenied(
                f"{subject_label(subject)} may not invoke {obj} in project {facts.project!r}; "
                "ask a project admin for a policy"
            )
        return decision

    def _record(self, facts: records.CallFacts, result: GenerationResult, gpu_seconds: float) -> None:
        usage = common_pb2.Usage(
            input_tokens=result.input_tokens, output_tokens=result.output_tokens, gpu_seconds=gpu_seconds
        )
        details = {
            "deployment": result.deployment,
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "ttft_ms": round(result.ttft_ms, 3),
            "e2e_ms": round(result.e2e_ms, 3),
            "frontdoor": facts.ctx.frontdoor,
        }
        if result.redactions:  # kinds and counts only, never the values
            details["redactions"] = dict(result.redactions)
            self.events.emit_audit(records.redaction_event(facts, result.redactions))
        self.events.emit_audit(records.model_call_event(facts, details))
        self.events.emit_usage(records.usage_event(facts, usage, cached=bool(result.cached)))
