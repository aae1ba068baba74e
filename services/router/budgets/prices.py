"""What a request may cost: prices in force (from the cost service) and the bound on a request's
GPU share learned from settled requests."""

from __future__ import annotations

from collections.abc import Iterable

from harness.cost.v1 import cost_pb2

from services.common.pricing import TOKENS_PER_UNIT, gpu_time_cost


class PriceTable:
    """Prices in force: tokens (micro-USD per 1M) by model, GPU-hours by GPU type, calls by tool.
    A missing price charges 0, as the cost service does (it flags the event as unpriced)."""

    def __init__(
        self,
        prices: dict[str, tuple[int, int]] | None = None,
        gpu_hour: dict[str, int] | None = None,
        tool_call: dict[str, int] | None = None,
    ) -> None:
        self._p = dict(prices or {})
        self._gpu = dict(gpu_hour or {})
        self._tool = dict(tool_call or {})

    @classmethod
    def from_protos(cls, prices: Iterable[cost_pb2.Price]) -> PriceTable:
        table: dict[str, list[int]] = {}
        gpu: dict[str, int] = {}
        tool: dict[str, int] = {}
        for p in prices:
            if p.kind == cost_pb2.PRICE_KIND_MODEL_INPUT_TOKENS:
                table.setdefault(p.subject, [0, 0])[0] = p.micro_usd
            elif p.kind == cost_pb2.PRICE_KIND_MODEL_OUTPUT_TOKENS:
                table.setdefault(p.subject, [0, 0])[1] = p.micro_usd
            elif p.kind == cost_pb2.PRICE_KIND_GPU_HOUR:
                gpu[p.subject] = p.micro_usd
            elif p.kind == cost_pb2.PRICE_KIND_TOOL_CALL:
                tool[p.subject] = p.micro_usd
        return cls({m: (i, o) for m, (i, o) in table.items()}, gpu, tool)

    def max_cost(self, model: str, prompt_tokens: int, max_tokens: int) -> int:
        """Upper bound of the request's token cost: rounded up, so any actual count within it fits."""
        pin, pout = self._p.get(model, (0, 0))
        return -(-(prompt_tokens * pin + max_tokens * pout) // TOKENS_PER_UNIT)

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> int:
        """Actual token cost, rounded half-up like services/common/pricing.py."""
        pin, pout = self._p.get(model, (0, 0))
        return (2 * (input_tokens * pin + output_tokens * pout) + TOKENS_PER_UNIT) // (2 * TOKENS_PER_UNIT)

    def gpu_cost(self, gpu_type: str, gpu_seconds: float) -> int:
        """GPU time at the GPU type's hourly price, with the cost service's arithmetic (exact
        decimal seconds, rounded half-up), so a request's cost is the ledger's to the micro-USD."""
        price = self._gpu.get(gpu_type, 0)
        if gpu_seconds <= 0 or not price:
            return 0
        return gpu_time_cost(gpu_seconds, price)

    def max_gpu_hour(self) -> int:
        return max(self._gpu.values(), default=0)

    def tool_cost(self, tool: str) -> int:
        return self._tool.get(tool, 0)


class GpuTimeEstimate:
    """A bound on a request's GPU share, learned per model from settled requests.

    The bound is HEADROOM times the model's moving-average GPU seconds per token (prompt +
    output), times the request's token bound (prompt + max_tokens); before a model has been
    observed here the rate is the one the ledger shows for it (`seed`, read from the cost service:
    what every replica charged lately, so a restarted router does not start from scratch), and
    with no history at all PRIOR_S_PER_TOKEN (10 ms a token: slower than a lone 8B or 70B AWQ
    sequence decodes on an H100). The router reserves the bound at the highest GPU-hour price
    and charges the request its GPU share *up to the bound*, so what settles never exceeds what
    was reserved and the hard limit holds for GPU time too.
    """

    ALPHA = 0.2
    HEADROOM = 2.0
    PRIOR_S_PER_TOKEN = 0.01

    def __init__(self) -> None:
        self._rate: dict[str, float] = {}  # observed by this router
        self._seeded: dict[str, float] = {}  # from the ledger

    def observe(self, model: str, tokens: int, gpu_seconds: float) -> None:
        if tokens <= 0 or gpu_seconds <= 0:
            return
        rate = gpu_seconds / tokens
        old = self._rate.get(model)
        self._rate[model] = rate if old is None else old + self.ALPHA * (rate - old)

    def seed(self, rates: dict[str, float]) -> None:
        """Replaces the ledger's rates (GPU seconds per token by model; non-positive ones ignored)."""
        self._seeded = {m: r for m, r in rates.items() if r > 0}

    def rate(self, model: str) -> float:
        return self._rate.get(model) or self._seeded.get(model) or self.PRIOR_S_PER_TOKEN

    def bound_s(self, model: str, tokens: int) -> float:
        return self.HEADROOM * self.rate(model) * max(0, tokens)
