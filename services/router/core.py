"""The router's request path, shared by every front door (it knows nothing of gRPC or HTTP).

A front door turns its protocol into a `GenerationInput`, runs it with `Router.run(call)` and
turns the `Chunk`s and the finished `Call` back into its protocol. The path is one list of
stages (`generate_stages`), run by the director (pipeline.py):

    Observe -> Identify -> Record -> ResolveAgent -> Authorize -> Validate -> RedactPrompt
    -> RateAdmit -> BudgetReserve -> CacheCoalesce -> RedactOutput -> Dispatch

Entry hooks run in that order; chunks and completion hooks travel back in reverse, so the
answer is redacted before it is cached, the call is priced before it is recorded, and every
completion runs even when another one failed. Budget and rate-limit holds settle and metrics
count after the records (release hooks), once the caller has the answer where the front door
says when that is (the OpenAI front door: after its last byte).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from harness.registry.v1 import registry_pb2

from services.common import context as reqctx
from services.common.errors import NotFound, Unauthenticated
from services.common.registry_mirror import RegistryMirror
from services.router.budgets import BudgetEnforcer
from services.router.call import Call, Chunk, EmbeddingInput, GenerationInput
from services.router.chunk_interval import merge_deltas
from services.router.dispatch import Dispatcher
from services.router.events import EventShipper
from services.router.flow import RateLimiter
from services.router.metrics import RouterMetrics
from services.router.pipeline import Director, Stage
from services.router.privacy import AgentRedactors
from services.router.redaction_workers import RedactionWorkers
from services.router.result_cache import CacheKeys, ResultCache
from services.router.stages.admit import (
    BudgetReserve,
    RateAdmit,
    RedactOutput,
    RedactPrompt,
    Validate,
)
from services.router.stages.embed import EmbedDispatch, RedactInputs, ValidateInputs
from services.router.stages.produce import CacheCoalesce, Dispatch
from services.router.stages.record import Journal, Observe, Record
from services.router.stages.relay import EnvoyRelay, NoOutputPolicy
from services.router.stages.resolve import Authorize, Identify, ResolveAgent
from services.router.views import EndpointView

__all__ = ["Call", "Chunk", "EmbeddingInput", "GenerationInput", "Router", "RouterPolicy"]


@dataclass(frozen=True)
class RouterPolicy:
    """Tunables of the hot path (built from the router's config)."""

    default_max_tokens: int = 256
    cache_ttl_s: float = 300.0  # result cache TTL; 0 disables the cache
    redaction_key: str = ""  # HMAC key of HASH-mode redaction (shared by every router replica)
    redaction_workers: int = 1  # processes that redact large inputs off the event loop


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
        self.redactors = AgentRedactors(policy.redaction_key, RedactionWorkers(policy.redaction_workers))
        self.metrics = metrics
        self.policy = policy
        self.budgets = budgets
        self.cache = CacheCoalesce(cache, CacheKeys(policy.redaction_key), metrics, policy.cache_ttl_s)
        self.authorize = Authorize(registry, events, metrics)
        stages = self.generate_stages()
        self.director = Director(stages, stages[-1], metrics.stage_errors)
        relay = self.relay_stages()
        self.relay_director = Director(relay, relay[-1], metrics.stage_errors)
        embedding = self.embed_stages()
        self.embed_director = Director(embedding, embedding[-1], metrics.stage_errors)

    def _resolve_stages(self) -> list[Stage]:
        """Every path starts so: metrics, who calls, the records, which agent, may it."""
        return [
            Observe(self.metrics),
            Identify(),
            Record(self.events),
            ResolveAgent(self.registry),
            self.authorize,
        ]

    def _admit_stages(self) -> list[Stage | None]:
        """Rate limits, then budgets (when the router enforces any)."""
        return [
            RateAdmit(self.registry, self.limiter),
            BudgetReserve(self.budgets) if self.budgets is not None else None,
        ]

    def generate_stages(self) -> list[Stage]:
        """The request path, in order; the last stage is the source of the chunks."""
        stages: list[Stage | None] = [
            *self._resolve_stages(),
            Validate(self.policy.default_max_tokens),
            RedactPrompt(self.redactors),
            *self._admit_stages(),
            self.cache,
            RedactOutput(),
            Journal(self.events),
            Dispatch(self.dispatcher, self.endpoints),
        ]
        return [s for s in stages if s is not None]

    def relay_stages(self) -> list[Stage]:
        """The ext_proc path (extproc/): the same stages, but Envoy carries the answer, so no
        result cache and no output redaction (an agent that needs it is refused), and the
        source picks the endpoint and reads the chunks Envoy relays."""
        stages: list[Stage] = []
        for stage in self.generate_stages()[:-1]:
            if isinstance(stage, CacheCoalesce | RedactOutput):
                continue
            stages.append(stage)
            if isinstance(stage, RedactPrompt):
                stages.append(NoOutputPolicy())
        return [*stages, EnvoyRelay(self.dispatcher, self.endpoints)]

    def relay(self, call: Call) -> AsyncIterator[Chunk]:
        """`run` for the ext_proc path: `call.relay` links it to the front door."""
        return self.relay_director.run(call)

    def embed_stages(self) -> list[Stage]:
        """An embedding call's path: the generation path's identity, policy, admission and
        records, with its own validation, input redaction and source (no result cache: the
        vectors are cheap to make and large to keep)."""
        stages: list[Stage | None] = [
            *self._resolve_stages(),
            ValidateInputs(),
            RedactInputs(self.redactors),
            *self._admit_stages(),
            Journal(self.events),
            EmbedDispatch(self.dispatcher, self.endpoints),
        ]
        return [s for s in stages if s is not None]

    def run(self, call: Call) -> AsyncIterator[Chunk]:
        """The answer's chunks; `call` holds the summary once the iterator ends. A client that
        asked for a minimum interval between chunks gets its deltas merged (chunk_interval.py)."""
        chunks = self.director.run(call)
        interval_ms = call.inp.min_chunk_interval_ms if isinstance(call.inp, GenerationInput) else 0
        return merge_deltas(chunks, interval_ms / 1000) if interval_ms > 0 else chunks

    async def embed(self, call: Call) -> None:
        """Runs an embedding call (`call.inp` an EmbeddingInput); `call.vectors` holds the answer."""
        async for _ in self.embed_director.run(call):
            pass

    async def allowed_models(self, named: str = "") -> list[registry_pb2.Model]:
        """Catalog models the calling agent's current versions pin and its policy allows, in pin
        order; with `named`, only those whose catalog or Triton name it is (the policy is then
        asked about those alone: a front door resolving a request's model asks on every call)."""
        ident = reqctx.current().identity
        if not ident.agent:
            raise Unauthenticated("no agent identity: call with an agent client certificate")
        agent = await self.registry.agent(ident.agent)
        out = []
        for name in dict.fromkeys(m for v in agent.versions for m in v.models):
            try:
                model = await self.registry.model(name)
            except NotFound:
                continue
            if named and named not in (model.name, model.triton_model):
                continue
            decision = await self.registry.check(
                f"agent:{agent.name}", agent.project, f"model:{name}", "invoke"
            )
            if decision.allowed:
                out.append(model)
        return out

    async def allowed_model(self, name: str) -> registry_pb2.Model | None:
        """The first of allowed_models() whose catalog or Triton name is `name`; None if none is."""
        found = await self.allowed_models(name) if name else []
        return found[0] if found else None
