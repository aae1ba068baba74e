"""The router's Generate path (knows nothing of gRPC servers).

identify -> resolve agent version -> authorize (user may invoke the agent; the agent may use
the model) -> pick an endpoint -> dispatch over ModelStreamInfer -> record audit and usage.
The router issue adds redaction, admission (rate limits, budgets, flow control), the result
cache and the full scheduler at the marked places.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common import context as reqctx
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from services.router import records
from services.router.events import EventShipper
from services.router.registry_mirror import RegistryMirror
from services.router.triton import TritonPool, TritonRequest
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


@dataclass
class GenerationResult:
    """Filled as the generation runs; complete once the final chunk was yielded."""

    request_id: str = ""
    agent_version: str = ""
    model: str = ""
    deployment: str = ""
    finish_reason: int = common_pb2.FINISH_REASON_UNSPECIFIED
    input_tokens: int = 0
    output_tokens: int = 0
    ttft_ms: float = 0.0
    tbt_ms: float = 0.0
    e2e_ms: float = 0.0
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


class Router:
    def __init__(
        self,
        registry: RegistryMirror,
        endpoints: EndpointView,
        triton: TritonPool,
        events: EventShipper,
        default_max_tokens: int = 256,
        backend_timeout_s: float = 300.0,
    ) -> None:
        self.registry = registry
        self.endpoints = endpoints
        self.triton = triton
        self.events = events
        self.default_max_tokens = default_max_tokens
        self.backend_timeout_s = backend_timeout_s

    async def generate(self, inp: GenerationInput, result: GenerationResult) -> AsyncIterator[str]:
        """Yields text deltas; `result` holds the summary when the iterator ends normally."""
        ctx = reqctx.current()
        ident = ctx.identity
        start = time.perf_counter()
        result.request_id = ctx.request_id
        if not ident.agent:
            raise Unauthenticated(
                "no agent identity: call through the Harness front door with an agent client certificate"
            )
        if not ident.user:
            raise Unauthenticated("no user credentials: send 'authorization: Bearer <jwt>' or 'x-api-key'")
        prompt = render_prompt(inp)
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        if inp.max_tokens < 0 or inp.temperature < 0 or not 0 <= inp.top_p <= 1 or inp.top_k < 0:
            raise InvalidArgument(
                "sampling: max_tokens, temperature and top_k must be >= 0 and top_p in [0, 1]"
            )

        agent = await self.registry.agent(ident.agent)
        if agent.state != common_pb2.AGENT_STATE_ONLINE:
            state = common_pb2.AgentState.Name(agent.state).removeprefix("AGENT_STATE_").lower()
            raise FailedPrecondition(
                f"agent {agent.name!r} is {state}, not online; set it online in the registry"
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
        facts = records.CallFacts(ctx, agent.name, version_label, agent.project, model=model_name)

        decision = await self._authorize(facts, ident.user, f"agent:{agent.name}")
        await self._authorize(facts, f"agent:{agent.name}", f"model:{model_name}")

        catalog_model = await self.registry.model(model_name)
        target = self.endpoints.pick(catalog_model.triton_model)
        result.agent_version, result.model = version_label, model_name
        result.deployment = f"{model_name}@{target.endpoint}"
        facts = records.CallFacts(
            ctx,
            agent.name,
            version_label,
            agent.project,
            model_name,
            result.deployment,
            target.gpu_type,
            rule=decision.rule,
        )
        request = TritonRequest(
            model=catalog_model.triton_model,
            prompt=prompt,
            max_tokens=inp.max_tokens or version.default_sampling.max_tokens or self.default_max_tokens,
            temperature=inp.temperature,
            top_p=inp.top_p,
            top_k=inp.top_k,
            seed=inp.seed,
            stop=inp.stop,
            request_id=ctx.request_id,
        )
        status = "OK"
        first_at = last_at = 0.0
        pieces = 0
        try:
            async for chunk in self.triton.stream(target.address, request, self.backend_timeout_s):
                if chunk.input_tokens is not None:
                    result.input_tokens = chunk.input_tokens
                if chunk.output_tokens is not None:
                    result.output_tokens = max(result.output_tokens, chunk.output_tokens)
                if chunk.text:
                    now = time.perf_counter()
                    first_at = first_at or now
                    last_at = now
                    pieces += 1
                    result.text_parts.append(chunk.text)
                    yield chunk.text
            result.finish_reason = (
                common_pb2.FINISH_REASON_LENGTH
                if result.output_tokens >= request.max_tokens
                else common_pb2.FINISH_REASON_STOP
            )
        except Unavailable:
            status = "UNAVAILABLE"
            raise
        except BaseException:
            status = "CANCELLED"
            raise
        finally:
            end = time.perf_counter()
            result.e2e_ms = (end - start) * 1000
            result.ttft_ms = (first_at - start) * 1000 if first_at else 0.0
            result.tbt_ms = (last_at - first_at) * 1000 / (pieces - 1) if pieces > 1 else 0.0
            self._record(records.CallFacts(**{**facts.__dict__, "status": status}), result)

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
            raise PermissionDenied(
                f"{who} {subject.removeprefix('agent:')!r} may not invoke {obj} in project {facts.project!r}; "
                "ask a project admin for a policy"
            )
        return decision

    def _record(self, facts: records.CallFacts, result: GenerationResult) -> None:
        usage = common_pb2.Usage(input_tokens=result.input_tokens, output_tokens=result.output_tokens)
        details = {
            "deployment": result.deployment,
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "ttft_ms": round(result.ttft_ms, 3),
            "e2e_ms": round(result.e2e_ms, 3),
        }
        self.events.emit_audit(records.model_call_event(facts, details))
        self.events.emit_usage(records.usage_event(facts, usage))
