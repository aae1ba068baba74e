"""The fleet's workload: ten agents of the brief's five kinds, their SLO classes, prompt and
output lengths, shared system prompts, and a tidal calendar with a month-end surge.

Time. Two clocks are compressed separately, and every figure says which one it is in:
  * engine time: the simulators run ``time_scale`` (S) times faster than the wall clock, so
    a wall millisecond is S simulated engine milliseconds. Rates below are requests per
    *engine* second; they are sent at S times that rate in wall terms. TTFTs, SLO targets and
    GPU-hours are reported in engine time (wall x S).
  * the calendar: one simulated business day (08:00-20:00, 12 h) lasts ``day_s`` wall seconds
    (S x day_s engine seconds). The run is two such days back to back: an ordinary weekday, then
    the month-end close, when the agents with ``month_end`` > 1 get that many times their
    traffic between 13:00 and 17:00 (ramping from 12:00 and back by 18:00). The day's load
    curve is sampled at its true rate but for a compressed length, so the request count is a
    sample of the day, not the day's total.

Arrivals are an inhomogeneous Poisson process per agent (thinning), rate = ``rate`` x tide(hour)
x burst(hour), the same seeded schedule for every set-up. Prompts are words of the simulator's
vocabulary (one token each): a per-agent system prompt shared by all its requests (the KV
cache's prefix reuse applies) plus a per-request body; max_tokens = the sampled output length
(the simulator generates exactly max_tokens). Lengths are log-normal, clipped to the ranges.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

from harness.common.v1 import common_pb2

from services.enginesim.text import VOCAB

WORDS = tuple(w for w in VOCAB if w.isalpha())
DAY_START_H, DAY_HOURS = 8.0, 12.0
DAYS = ("weekday", "month-end")

# SLO classes: TTFT targets and the caller's end-to-end deadline, in simulated engine ms.
SLO_CLASSES = ("realtime", "interactive", "batch")
TTFT_TARGET_MS = {"realtime": 200.0, "interactive": 1_000.0, "batch": 60_000.0}
DEADLINE_MS = {"realtime": 2_000.0, "interactive": 60_000.0, "batch": 600_000.0}
SLO_PROTO = {
    "realtime": common_pb2.SLO_CLASS_REALTIME,
    "interactive": common_pb2.SLO_CLASS_INTERACTIVE,
    "batch": common_pb2.SLO_CLASS_BATCH,
}

# Catalog models (the registry's names) and the simulator profile each maps to (models.yaml).
MODELS = {
    "llama-3-8b": "llama-3-8b-instruct",
    "llama-3-8b-awq": "llama-3-8b-instruct-awq",
    "llama-3-70b-awq": "llama-3-70b-instruct-awq",
}


@dataclass(frozen=True)
class AgentSpec:
    name: str
    kind: str
    agent_type: int
    slo: str
    model: str  # catalog name (MODELS)
    rate: float  # requests per engine second at tide 1.0 (a weekday's busiest hour)
    system_tokens: int  # shared system prompt
    body_tokens: tuple[int, int]  # per-request prompt body, clipped log-normal
    out_tokens: tuple[int, int]
    month_end: float = 1.0  # traffic multiplier in the month-end close window


T = common_pb2
AGENTS: tuple[AgentSpec, ...] = (
    # Card/payment fraud scoring: a verdict and a reason code, on a transaction's features.
    AgentSpec("risk-payments", "realtime risk", T.AGENT_TYPE_REALTIME_RISK, "realtime", "llama-3-8b",
              1.5, 350, (80, 200), (8, 32), month_end=10.0),
    AgentSpec("risk-aml", "realtime risk", T.AGENT_TYPE_REALTIME_RISK, "realtime", "llama-3-8b",
              0.5, 500, (150, 400), (16, 48)),
    # Customer-service RAG: persona + policy, retrieved passages, the question; a short answer.
    AgentSpec("cs-retail", "customer-service RAG", T.AGENT_TYPE_RAG, "interactive", "llama-3-8b-awq",
              0.4, 400, (800, 2400), (80, 300)),
    AgentSpec("cs-corporate", "customer-service RAG", T.AGENT_TYPE_RAG, "interactive", "llama-3-8b-awq",
              0.15, 450, (1000, 2800), (100, 300)),
    # RPA: a form schema, a document; JSON out. Invoices and reconciliation surge at month-end.
    AgentSpec("rpa-invoices", "RPA", T.AGENT_TYPE_RPA, "interactive", "llama-3-8b-awq",
              0.2, 600, (200, 800), (40, 160), month_end=10.0),
    AgentSpec("rpa-reconcile", "RPA", T.AGENT_TYPE_RPA, "batch", "llama-3-8b-awq",
              0.1, 300, (500, 1500), (30, 120), month_end=10.0),
    # Code: tool definitions + repository context; completions and reviews.
    AgentSpec("code-assist", "code", T.AGENT_TYPE_CODE, "interactive", "llama-3-8b",
              0.15, 1200, (300, 1800), (100, 400)),
    AgentSpec("code-review", "code", T.AGENT_TYPE_CODE, "batch", "llama-3-8b",
              0.05, 800, (1000, 3000), (150, 500)),
    # Batch summarisation on the 70B: month-end reports, call transcripts.
    AgentSpec("summarise-reports", "batch summarisation", T.AGENT_TYPE_CUSTOM, "batch", "llama-3-70b-awq",
              0.03, 150, (1500, 4000), (150, 400), month_end=10.0),
    AgentSpec("summarise-calls", "batch summarisation", T.AGENT_TYPE_CUSTOM, "batch", "llama-3-70b-awq",
              0.05, 150, (800, 2500), (100, 250)),
)  # fmt: skip

# Weekday tide: share of the busiest hour's rate, by hour (linear in between).
TIDE = ((8.0, 0.25), (9.0, 0.7), (10.0, 1.0), (12.0, 0.9), (12.5, 0.6), (13.5, 0.9), (14.0, 1.0),
        (17.0, 0.9), (18.0, 0.5), (19.0, 0.3), (20.0, 0.2))  # fmt: skip
BURST = ((12.0, 0.0), (13.0, 1.0), (17.0, 1.0), (18.0, 0.0))  # share of the month-end multiplier


def _interp(points: tuple[tuple[float, float], ...], h: float) -> float:
    xs = [x for x, _ in points]
    if h <= xs[0]:
        return points[0][1]
    if h >= xs[-1]:
        return points[-1][1]
    i = bisect.bisect_right(xs, h)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return y0 + (y1 - y0) * (h - x0) / (x1 - x0)


def tide(hour: float) -> float:
    return _interp(TIDE, hour)


def multiplier(agent: AgentSpec, day: int, hour: float) -> float:
    """Rate multiplier of ``agent`` at ``hour`` (08-20) of day 0 (weekday) or 1 (month-end)."""
    burst = 1.0
    if day == 1 and agent.month_end > 1:
        burst = 1.0 + (agent.month_end - 1.0) * _interp(BURST, hour)
    return tide(hour) * burst


@dataclass(frozen=True)
class Request:
    at_s: float  # wall seconds from the start of the run
    day: int
    hour: float  # simulated clock, 8.0-20.0
    agent: str
    slo: str
    max_tokens: int
    body_tokens: int
    seed: int  # of the body's words: the prompt is built at send time (a full-scale run has ~10^5)

    @property
    def prompt(self) -> str:
        body = _words(random.Random(self.seed), self.body_tokens)
        return f"{_SYSTEM[self.agent]}\nRequest {self.day}-{self.seed}: {body}"


def _length(rng: random.Random, lo_hi: tuple[int, int]) -> int:
    lo, hi = lo_hi
    mu, sigma = math.log(math.sqrt(lo * hi)), math.log(hi / lo) / 4
    return int(min(hi, max(lo, rng.lognormvariate(mu, sigma))))


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def system_prompt(agent: AgentSpec) -> str:
    rng = random.Random(agent.name)
    return f"System: you are {agent.name}, a {agent.kind} agent. " + _words(rng, agent.system_tokens - 9)


_SYSTEM = {a.name: system_prompt(a) for a in AGENTS}


def build_schedule(day_s: float, time_scale: float, seed: int = 7) -> list[Request]:
    """Every request of the run, by wall send time (the same for every set-up)."""
    out: list[Request] = []
    engine_day = day_s * time_scale  # engine seconds in one simulated business day
    for a_idx, agent in enumerate(AGENTS):
        rng = random.Random(seed * 1000 + a_idx)
        peak = agent.rate * max(1.0, agent.month_end)  # the thinning envelope (tide <= 1)
        for day in range(len(DAYS)):
            t = 0.0
            while True:
                t += rng.expovariate(peak)
                if t >= engine_day:
                    break
                hour = DAY_START_H + DAY_HOURS * t / engine_day
                if rng.random() * peak > agent.rate * multiplier(agent, day, hour):
                    continue
                out.append(
                    Request(
                        at_s=day * day_s + t / time_scale, day=day, hour=hour, agent=agent.name,
                        slo=agent.slo, max_tokens=_length(rng, agent.out_tokens),
                        body_tokens=_length(rng, agent.body_tokens), seed=rng.getrandbits(48),
                    )
                )  # fmt: skip
    out.sort(key=lambda r: r.at_s)
    return out


def sim_hours(day: int, hour: float) -> float:
    """A point on the run's calendar axis: hours since 08:00 of the weekday (0-24)."""
    return day * DAY_HOURS + (hour - DAY_START_H)
