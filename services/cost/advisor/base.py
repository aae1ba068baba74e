"""Advisor core: the facts rules read, the Recommendation they return, and the Rule interface.

No gRPC here. Facts come from the usage ledger (via CostStore.report) and, optionally, from a fleet
snapshot (the pool's deployments and the registry's catalog). Money is integer micro-USD.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from harness.cost.v1 import cost_pb2

from services.common.pricing import TOKENS_PER_UNIT

GIB = 1 << 30
DAYS_PER_MONTH = 30.4375  # 365.25 / 12
HOURS_PER_MONTH = DAYS_PER_MONTH * 24
US_PER_DAY = 86_400 * 1_000_000
# The router's default max_tokens when neither the request nor the agent version sets one.
ROUTER_DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class UsageRow:
    """Ledger totals of one (project, agent, model, deployment) over the period."""

    project: str
    agent: str
    model: str
    deployment: str
    requests: int
    input_tokens: int
    output_tokens: int
    gpu_seconds: float
    cost_micro_usd: int


@dataclass(frozen=True)
class DayRow:
    """Requests a deployment served on one calendar day."""

    deployment: str
    day: str
    requests: int


@dataclass(frozen=True)
class CatalogModel:
    name: str
    family: str = ""
    parameters_b: float = 0.0
    quantization: str = ""
    memory_gib: float = 0.0
    context_length: int = 0  # tokens (0 = unknown)
    triton_model: str = ""  # what the endpoints load ("" = the catalog name)


@dataclass(frozen=True)
class FleetDeployment:
    """One deployment in the pool, with what it holds on which GPU."""

    name: str  # as the ledger's `deployment` column names it, e.g. "llama-3-8b@sim-0"
    model: str
    replicas: int = 1
    memory_bytes: int = 0  # per replica
    gpu_type: str = ""
    gpu_memory_bytes: int = 0  # of one GPU of the endpoint (0 = unknown)
    idle_ttl_s: float = 0.0  # 0 = never scales to zero
    owners: tuple[str, ...] = ()
    endpoint: str = ""  # the pool endpoint it runs on
    state: str = ""  # "ready", "loading"... ("" = unknown)
    idle_s: float | None = None  # seconds since it last served a request (None = unknown)

    def gpu_share(self) -> float | None:
        """GPUs this deployment holds: its VRAM over one GPU's VRAM, per replica (None = unknown)."""
        if not self.memory_bytes or not self.gpu_memory_bytes:
            return None
        return self.replicas * self.memory_bytes / self.gpu_memory_bytes


@dataclass(frozen=True)
class Fleet:
    """What the pool and the registry know: deployments, the model catalog, agent max_tokens."""

    deployments: tuple[FleetDeployment, ...] = ()
    catalog: tuple[CatalogModel, ...] = ()
    agent_max_tokens: Mapping[str, int] = field(default_factory=dict)

    def deployment(self, name: str) -> FleetDeployment | None:
        return next((d for d in self.deployments if d.name == name), None)

    def model(self, name: str) -> CatalogModel | None:
        return next((m for m in self.catalog if m.name == name), None)


@dataclass(frozen=True)
class FleetSnapshot:
    """A provider's answer with what limited it: `fleet` None when the pool could not be read,
    `notes` naming the service that failed and why (they reach AdviseResponse.notes)."""

    fleet: Fleet | None
    notes: tuple[str, ...] = ()


# Supplies the fleet when Advise runs; None (or a provider answering None) = no pool configured.
# A provider may answer a FleetSnapshot to say what it could not read; the live one, over the pool
# and the registry, is services/cost/fleet_source.LiveFleet.
FleetProvider = Callable[[], Awaitable[Fleet | FleetSnapshot | None]]


@dataclass(frozen=True)
class Facts:
    start_us: int
    end_us: int
    usage: tuple[UsageRow, ...]
    days: tuple[DayRow, ...]
    # (PriceKind, subject) -> micro-USD per unit, prices in force at end_us
    prices: Mapping[tuple[int, str], int]
    fleet: Fleet | None = None
    fleet_notes: tuple[str, ...] = ()  # what the fleet provider could not read, and why

    @property
    def period_days(self) -> float:
        return (self.end_us - self.start_us) / US_PER_DAY

    def monthly(self, amount: float) -> float:
        """Scales an amount observed over the period to a month."""
        return amount * DAYS_PER_MONTH / self.period_days if self.period_days > 0 else 0.0

    def gpu_hour_price(self, gpu_type: str) -> int | None:
        return self.prices.get((cost_pb2.PRICE_KIND_GPU_HOUR, gpu_type))

    def token_prices(self, model: str) -> tuple[int, int] | None:
        inp = self.prices.get((cost_pb2.PRICE_KIND_MODEL_INPUT_TOKENS, model))
        out = self.prices.get((cost_pb2.PRICE_KIND_MODEL_OUTPUT_TOKENS, model))
        return None if inp is None and out is None else (inp or 0, out or 0)

    def catalog_model(self, name: str) -> CatalogModel | None:
        return self.fleet.model(name) if self.fleet else None


@dataclass(frozen=True)
class Recommendation:
    rule: str
    title: str
    action: str
    evidence: str
    monthly_saving_micro_usd: int = 0
    vram_saved_bytes: int = 0

    def to_proto(self) -> cost_pb2.Recommendation:
        return cost_pb2.Recommendation(
            rule=self.rule, title=self.title, action=self.action, evidence=self.evidence,
            monthly_saving_micro_usd=self.monthly_saving_micro_usd, vram_saved_bytes=self.vram_saved_bytes,
        )  # fmt: skip


@dataclass(frozen=True)
class RuleResult:
    recommendations: tuple[Recommendation, ...] = ()
    notes: tuple[str, ...] = ()  # why the rule could not say more (missing fleet, catalog, price)


class Rule(Protocol):
    """An advisor plugin: reads the facts, returns recommendations (and notes on what it lacked)."""

    name: str

    def advise(self, facts: Facts) -> RuleResult: ...


def usd(micro: float) -> str:
    return f"${micro / 1_000_000:,.2f}"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def micro(value: float) -> int:
    """Rounds a non-negative estimate to whole micro-USD (negative savings become 0)."""
    return max(0, math.floor(value + 0.5))


def token_cost(inp: int, out: int, prices: tuple[int, int]) -> float:
    return (inp * prices[0] + out * prices[1]) / TOKENS_PER_UNIT
