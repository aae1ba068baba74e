"""What `harness up` prints once the stack is healthy: every port, and how to call it.

Every command printed here runs as printed after `source .harness/env` (which puts the
virtualenv's `harness`, `grpcurl` and `envoy` on PATH).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.stack.layout import StackPaths, StackPorts


def shared_state(redis: tuple[str, str] | None) -> str:
    """What the routers share: (Redis URL, key prefix), or nothing."""
    if redis is None:
        return "  shared router state       none: each router enforces rate limits and budgets alone (set HARNESS_REDIS_URL)\n"
    return f"  shared router state       {redis[0]} (keys {redis[1]}*)\n"


def _openai(sim: Any) -> bool:
    return getattr(sim, "openai", False)


def port_lines(p: StackPorts, sims: Sequence[Any]) -> list[str]:
    """One line per process: its gRPC address and its Prometheus /metrics URL."""
    local = "127.0.0.1"

    def row(what: str, port: int, metrics: int) -> str:
        return f"  {what:<25} {local}:{port:<6} metrics http://{local}:{metrics}/metrics"

    routers = list(zip(p.routers, p.router_metrics, p.router_http, strict=True))
    lines = [row(f"router-{i + 1}", port, metrics) for i, (port, metrics, _) in enumerate(routers)]
    lines += [
        row(f"router-{i + 1} OpenAI HTTP", http, metrics) for i, (_, metrics, http) in enumerate(routers)
    ]
    lines += [
        row("registry", p.registry, p.registry_metrics),
        row("pool", p.pool, p.pool_metrics),
        row("audit", p.audit, p.audit_metrics),
        row("cost", p.cost, p.cost_metrics),
    ]
    lines += [
        f"  engine simulator {s.spec.name:<8} {s.address:<16} metrics {s.metrics_url}  ({', '.join(s.spec.models)})"
        + (
            f"  OpenAI API (vLLM); Triton-named metrics and /faults on :{s.metrics_port}"
            if _openai(s)
            else ""
        )
        + (
            f"  KV events tcp://{local}:{s.kv_events_port} (replay :{s.kv_replay_port})"
            if getattr(s, "kv_events_port", 0)
            else ""
        )
        for s in sims
    ]
    return lines


def banner(
    env: dict[str, str],
    p: StackPorts,
    paths: StackPaths,
    sims: Sequence[Any],
    redis: tuple[str, str] | None = None,
    extra: Sequence[str] = (),
) -> str:
    """`extra`: more "  what  where" lines (services of the demo) listed with the ports."""
    tls = '-cacert "$HARNESS_CA" -cert "$HARNESS_CERT" -key "$HARNESS_KEY"'
    ports = "\n".join([*port_lines(p, sims), *extra])
    engines = (
        "The simulators directly (Triton's protocol, no TLS; addresses in $HARNESS_TRITON_ADDRS):\n"
        f"  grpcurl -plaintext {sims[0].address} inference.GRPCInferenceService/RepositoryIndex\n"
        f"  curl -s {sims[0].metrics_url} | grep nv_inference\n"
        if sims
        else "Your Triton servers, as the pool sees them (addresses in $HARNESS_TRITON_ADDRS):\n"
        "  harness endpoints list\n"
    )
    return f"""
Harness is up (Ctrl-C stops everything).
  front door (Envoy, mTLS)  {env["HARNESS_ADDR"]}
  OpenAI API (same door)    {env["HARNESS_OPENAI_BASE_URL"]}
  OpenAI API, agent keys    {env["HARNESS_OPENAI_KEY_BASE_URL"]} (TLS; an agent-bound API key, no client cert)
  Envoy admin               {env["HARNESS_ENVOY_ADMIN"]}
{ports}
  logs {paths.logs}/   state {paths.state}/

Try it (after `source` the virtualenv's harness and grpcurl are on PATH):
  source {paths.env_file}
  grpcurl {tls} "$HARNESS_ADDR" list
  grpcurl {tls} -H "authorization: Bearer $HARNESS_TOKEN" \\
      -d '{{"prompt": "Summarise the ledger policy", "sampling": {{"max_tokens": 32}}}}' \\
      "$HARNESS_ADDR" harness.router.v1.Router/Generate
  grpcurl {tls} -H "authorization: Bearer $HARNESS_TOKEN" \\
      -d '{{"filter": {{"agent": "{env["HARNESS_AGENT"]}"}}}}' "$HARNESS_ADDR" harness.audit.v1.Audit/Query
  grpcurl {tls} -H "authorization: Bearer $HARNESS_TOKEN" \\
      -d '{{"group_by": ["agent", "model"]}}' "$HARNESS_ADDR" harness.cost.v1.Cost/Report
  curl -N --cacert "$HARNESS_CA" --cert "$HARNESS_CERT" --key "$HARNESS_KEY" \
      -H "Authorization: Bearer $HARNESS_TOKEN" -H 'Content-Type: application/json' \
      -d '{{"model": "llama-3-8b", "stream": true, "messages": [{{"role": "user", "content": "Hello"}}]}}' \
      "$HARNESS_OPENAI_BASE_URL/chat/completions"

Operate it (the ops CLI reads {paths.env_file}):
  harness agents list
  harness agents state {env["HARNESS_AGENT"]} draining      # the routers refuse it within a second
  harness agents state {env["HARNESS_AGENT"]} online
  harness policies check agent:{env["HARNESS_AGENT"]} ledger model:llama-3-8b invoke

{engines}""" + shared_state(redis)
