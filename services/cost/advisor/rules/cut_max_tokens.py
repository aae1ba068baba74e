"""cut_max_tokens: max_tokens reservations far above the output an agent actually produces.

The ledger has no per-request max_tokens, so the rule compares each agent's mean output tokens per
request (ledger) with its effective max_tokens: the agent version's default from the fleet snapshot
(registry), else the router's default (256). When the mean is under FAR_BELOW of it, cut max_tokens
to HEADROOM x the mean (rounded up to 16). Tokens are billed as generated, so the dollar saving is
0: the cut frees budget reservations (a request reserves max_tokens x the output price) and KV-cache
admission headroom, and bounds runaway generations.
"""

from __future__ import annotations

import math
from collections import defaultdict

from services.cost.advisor.base import ROUTER_DEFAULT_MAX_TOKENS, Facts, Recommendation, RuleResult, usd

FAR_BELOW = 0.25
HEADROOM = 2.0
MIN_REQUESTS = 100


class CutMaxTokens:
    name = "cut_max_tokens"

    def advise(self, facts: Facts) -> RuleResult:
        configured = facts.fleet.agent_max_tokens if facts.fleet else {}
        notes = () if facts.fleet else (
            f"no fleet snapshot: agents' max_tokens assumed to be the router default {ROUTER_DEFAULT_MAX_TOKENS}",
        )  # fmt: skip
        per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        models: dict[str, set[str]] = defaultdict(set)
        for u in facts.usage:
            if u.agent:
                per[u.agent][0] += u.requests
                per[u.agent][1] += u.output_tokens
                models[u.agent].add(u.model)
        recs = []
        for agent, (n, out) in sorted(per.items()):
            limit = configured.get(agent) or ROUTER_DEFAULT_MAX_TOKENS
            if n < MIN_REQUESTS or out / n >= FAR_BELOW * limit:
                continue
            mean = out / n
            new = max(16, math.ceil(HEADROOM * mean / 16) * 16)
            source = "agent version default" if configured.get(agent) else "router default"
            reserved = (
                max(((facts.token_prices(m) or (0, 0))[1] for m in models[agent]), default=0)
                * (limit - new)
                / 1_000_000
            )
            recs.append(Recommendation(
                rule=self.name,
                title=f"Cut {agent}'s max_tokens from {limit} to {new}",
                action=f"Set max_tokens {new} in {agent}'s agent version",
                evidence=(f"{agent}: {n} requests in {facts.period_days:.0f} days, mean {mean:.0f} output tokens "
                          f"vs max_tokens {limit} ({source}); each request reserves {limit - new} fewer tokens "
                          f"({usd(reserved)} less budget held per request). Tokens are billed as generated, "
                          f"so no monthly dollar saving is claimed"),
            ))  # fmt: skip
        return RuleResult(tuple(recs), notes)
