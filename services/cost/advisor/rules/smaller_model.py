"""smaller_model: an agent whose requests are short and simple on a big model -> a smaller one.

Inputs: ledger per (agent, model): requests, input and output tokens; catalog (family,
parameters_b); token prices. "Short and simple" = mean output <= SHORT_OUTPUT tokens and mean
input <= SHORT_INPUT tokens per request (the ledger keeps totals per request, so means are what
it can show). The target is the largest catalog model with at most half the parameters, same family
first, smallest footprint (e.g. the AWQ variant) on a tie. Saving = the agent's tokens on the big
model re-priced at the smaller one's token prices.
"""

from __future__ import annotations

from collections import defaultdict

from services.cost.advisor.base import CatalogModel, Facts, Recommendation, RuleResult, micro, token_cost, usd

SHORT_OUTPUT = 64
SHORT_INPUT = 1024
MIN_REQUESTS = 100  # too few requests say nothing about an agent's traffic
SIZE_RATIO = 0.5


def smaller_than(model: CatalogModel, catalog: tuple[CatalogModel, ...]) -> CatalogModel | None:
    small = [m for m in catalog if 0 < m.parameters_b <= SIZE_RATIO * model.parameters_b]
    return max(small, key=lambda m: (m.family == model.family, m.parameters_b, -m.memory_gib), default=None)


class SmallerModel:
    name = "smaller_model"

    def advise(self, facts: Facts) -> RuleResult:
        if facts.fleet is None or not facts.fleet.catalog:
            return RuleResult(
                notes=("no model catalog (no registry configured or reachable): model sizes unknown",)
            )
        per: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        for u in facts.usage:
            if u.agent:
                t = per[(u.agent, u.model)]
                t[0] += u.requests
                t[1] += u.input_tokens
                t[2] += u.output_tokens
        recs = []
        for (agent, name), (n, inp, out) in sorted(per.items()):
            model = facts.catalog_model(name)
            if model is None or n < MIN_REQUESTS or out / n > SHORT_OUTPUT or inp / n > SHORT_INPUT:
                continue
            target = smaller_than(model, facts.fleet.catalog)
            if target is None:
                continue
            here, there = facts.token_prices(name), facts.token_prices(target.name)
            if here and there:
                saving = facts.monthly(token_cost(inp, out, here) - token_cost(inp, out, there))
                cost = f"; re-priced at {target.name}: {usd(saving)}/month"
            else:
                saving, cost = 0.0, f"; token prices of {name} or {target.name} missing: no dollar estimate"
            recs.append(Recommendation(
                rule=self.name,
                title=f"Route {agent}'s short requests from {name} to {target.name}",
                action=(f"Route {agent}'s requests with short prompts and answers to {target.name} "
                        f"({target.parameters_b:g}B) after checking its evaluations there"),
                evidence=(f"{agent} on {name} ({model.parameters_b:g}B): {n} requests in {facts.period_days:.0f} days, "
                          f"mean {inp / n:.0f} input and {out / n:.0f} output tokens "
                          f"(short: <= {SHORT_INPUT} in, <= {SHORT_OUTPUT} out){cost}"),
                monthly_saving_micro_usd=micro(saving),
            ))  # fmt: skip
        return RuleResult(tuple(recs))
