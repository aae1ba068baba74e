"""quantize: a model with a quantized variant in the catalog (same family and size, AWQ/int4).

Inputs: catalog (family, parameters_b, quantization, memory_gib); ledger tokens of the model;
token prices of both; fleet deployments of the model (replicas, GPU share, GPU type). Saving =
the period's tokens re-priced at the variant's token prices (when both are priced) + the GPU time
the smaller footprint frees (VRAM delta share of a GPU x hours x GPU-hour price, when the fleet
knows the GPU). Quality must be checked before switching; the action says so.
"""

from __future__ import annotations

from collections import defaultdict

from services.cost.advisor.base import (
    GIB,
    HOURS_PER_MONTH,
    CatalogModel,
    Facts,
    Recommendation,
    RuleResult,
    gib,
    micro,
    token_cost,
    usd,
)

QUANTIZED = ("awq", "int4", "gptq")


def is_quantized(m: CatalogModel) -> bool:
    q = m.quantization.lower()
    return any(k in q for k in QUANTIZED)


def variant_of(model: CatalogModel, catalog: tuple[CatalogModel, ...]) -> CatalogModel | None:
    """The smallest quantized catalog model of the same family and parameter count."""
    if is_quantized(model) or not model.family:
        return None
    same = [
        m for m in catalog
        if m.name != model.name and m.family == model.family and m.parameters_b == model.parameters_b
        and is_quantized(m) and 0 < m.memory_gib < model.memory_gib
    ]  # fmt: skip
    return min(same, key=lambda m: m.memory_gib, default=None)


class Quantize:
    name = "quantize"

    def advise(self, facts: Facts) -> RuleResult:
        if facts.fleet is None or not facts.fleet.catalog:
            return RuleResult(
                notes=("no model catalog (no registry configured or reachable): quantized variants unknown",)
            )
        tokens: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for u in facts.usage:
            t = tokens[u.model]
            t[0] += u.input_tokens
            t[1] += u.output_tokens
            t[2] += u.requests
        models = set(tokens) | {d.model for d in facts.fleet.deployments}
        recs = []
        for name in sorted(models):
            model = facts.catalog_model(name)
            variant = variant_of(model, facts.fleet.catalog) if model else None
            if variant is not None:
                recs.append(self._one(facts, model, variant, tokens.get(name, [0, 0, 0])))
        return RuleResult(tuple(recs))

    def _one(self, facts: Facts, model: CatalogModel, variant: CatalogModel, t: list[int]) -> Recommendation:
        delta = (model.memory_gib - variant.memory_gib) * GIB
        deps = [d for d in facts.fleet.deployments if d.model == model.name]
        vram = delta * sum(d.replicas for d in deps) if deps else delta
        parts, saving = [], 0.0
        parts.append(f"{model.name} ({model.quantization}, {model.memory_gib:g} GiB) vs {variant.name} "
                     f"({variant.quantization}, {variant.memory_gib:g} GiB) per replica")  # fmt: skip
        here, there = facts.token_prices(model.name), facts.token_prices(variant.name)
        if t[2] and here and there:
            tok = facts.monthly(token_cost(t[0], t[1], here) - token_cost(t[0], t[1], there))
            saving += tok
            parts.append(f"{t[2]} requests, {t[0]} input + {t[1]} output tokens in {facts.period_days:.0f} days "
                         f"re-priced at {variant.name}: {usd(tok)}/month")  # fmt: skip
        elif t[2]:
            parts.append(f"token prices of {model.name} or {variant.name} missing: no token saving estimated")
        for d in deps:
            price = facts.gpu_hour_price(d.gpu_type)
            if d.gpu_memory_bytes and price is not None:
                share = d.replicas * delta / d.gpu_memory_bytes
                gpu = share * HOURS_PER_MONTH * price
                saving += gpu
                parts.append(f"{d.name}: {d.replicas} x {gib(delta)} = {share:.2f} GPU at {usd(price)}/GPU-h "
                             f"= {usd(gpu)}/month")  # fmt: skip
        if not deps:
            parts.append(f"{model.name} has no deployment in the fleet: VRAM saving is per replica")
        return Recommendation(
            rule=self.name,
            title=f"Move {model.name} to {variant.name}",
            action=f"Serve agents on {model.name} from {variant.name} after checking their evaluations on it",
            evidence="; ".join(parts) + f". Frees {gib(vram)} of VRAM.",
            monthly_saving_micro_usd=micro(saving),
            vram_saved_bytes=int(vram),
        )
