"""What `harness up` prints once the stack is healthy: where everything is and how to call it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.stack.layout import StackPaths, StackPorts


def shared_state(redis: tuple[str, str] | None) -> str:
    """What the routers share: (Redis URL, key prefix), or nothing."""
    if redis is None:
        return "  shared router state       none: each router enforces rate limits and budgets alone (set HARNESS_REDIS_URL)\n"
    return f"  shared router state       {redis[0]} (keys {redis[1]}*)\n"


def banner(
    env: dict[str, str],
    p: StackPorts,
    paths: StackPaths,
    sims: Sequence[Any],
    redis: tuple[str, str] | None = None,
) -> str:
    tls = '-cacert "$HARNESS_CA" -cert "$HARNESS_CERT" -key "$HARNESS_KEY"'
    sim_lines = "\n".join(
        f"  engine simulator {s.spec.name:<8} {s.address}  metrics {s.metrics_url}  ({', '.join(s.spec.models)})"
        for s in sims
    )
    first = sims[0]
    return f"""
Harness is up (Ctrl-C stops everything).
  front door (Envoy, mTLS)  {env["HARNESS_ADDR"]}
  Envoy admin               {env["HARNESS_ENVOY_ADMIN"]}
{sim_lines}
  routers {", ".join(f"127.0.0.1:{r}" for r in p.routers)}; registry :{p.registry}; pool :{p.pool}; audit :{p.audit}; cost :{p.cost}
  logs {paths.logs}/   state {paths.state}/

Try it:
  source {paths.env_file}
  grpcurl {tls} "$HARNESS_ADDR" list
  grpcurl {tls} -H "authorization: Bearer $HARNESS_TOKEN" \\
      -d '{{"prompt": "Summarise the ledger policy", "sampling": {{"max_tokens": 32}}}}' \\
      "$HARNESS_ADDR" harness.router.v1.Router/Generate
  grpcurl {tls} -H "authorization: Bearer $HARNESS_TOKEN" \\
      -d '{{"filter": {{"agent": "{env["HARNESS_AGENT"]}"}}}}' "$HARNESS_ADDR" harness.audit.v1.Audit/Query
  grpcurl {tls} -H "authorization: Bearer $HARNESS_TOKEN" \\
      -d '{{"group_by": ["agent", "model"]}}' "$HARNESS_ADDR" harness.cost.v1.Cost/Report

Operate the registry (the ops CLI reads {paths.env_file}):
  .venv/bin/harness agents list
  .venv/bin/harness agents state {env["HARNESS_AGENT"]} draining      # the routers refuse it within a second
  .venv/bin/harness policies check agent:{env["HARNESS_AGENT"]} ledger model:llama-3-8b invoke

The simulators directly (Triton's protocol, no TLS; addresses in $HARNESS_TRITON_ADDRS):
  grpcurl -plaintext {first.address} inference.GRPCInferenceService/RepositoryIndex
  curl -s {first.metrics_url} | grep nv_inference
""" + shared_state(redis)
