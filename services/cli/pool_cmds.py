"""`harness endpoints|deployments|gpus ...`: the pool's Triton endpoints, model deployments
and GPUs, with live load. Reaches the pool directly (HARNESS_POOL_ADDR with the ops
certificate, from `.harness/env`) or through Envoy (HARNESS_ADDR and a user token).

`harness endpoints drain NAME` stops new traffic to an endpoint (it is deregistered, so the
routers stop picking it) and then waits, by its metrics, for its in-flight requests to end.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request

from harness.pool.v1 import pool_pb2 as pb
from harness.pool.v1.pool_pb2_grpc import PoolStub

from services.cli import output
from services.cli.base import Ctx, UsageError, key_value

DIRECT_ADDR_ENV = "HARNESS_POOL_ADDR"
FORMATS = ("table", "json")
MAX_DRAIN_S = 3600.0
GIB = 1 << 30


def _call(ctx: Ctx, rpc: str, request):
    if ctx._channel is None:
        ctx._channel = ctx.conn.channel()
    stub = PoolStub(ctx._channel)
    return getattr(stub, rpc)(request, metadata=ctx.conn.metadata(), timeout=ctx.conn.timeout_s)


def _emit(ctx: Ctx, args: argparse.Namespace, message, human) -> int:
    if args.format == "json" or ctx.json:
        print(output.to_json(message))
    else:
        human(message)
    sys.stdout.flush()
    return 0


def _health(value: int) -> str:
    return output.enum_short(pb.EndpointHealth, value)


def _state(value: int) -> str:
    return output.enum_short(pb.ModelState, value)


# --- endpoints ----------------------------------------------------------------------------
def endpoints_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = _call(ctx, "ListEndpoints", pb.ListEndpointsRequest(model=args.model or ""))

    def human(r) -> None:
        rows = []
        for ep in r.endpoints:
            seen = output.when(ep.last_seen) if ep.HasField("last_seen") else "-"
            models = ep.models or [pb.EndpointModel()]
            for i, m in enumerate(models):
                kind = f"openai/{ep.flavour or 'vllm'}" if ep.kind == "openai" else "triton"
                head = (
                    [ep.name, kind, ep.address, _health(ep.health), f"{ep.gpu_utilization:.0%}", seen]
                    if i == 0
                    else [""] * 6
                )
                model = [
                    m.name or "-",
                    _state(m.state) if m.name else "",
                    m.requests,
                    m.active_requests,
                    m.waiting_requests,
                    "-" if m.kv_cache_unknown or not m.name else f"{m.kv_cache_fraction:.0%}",
                    f"{m.prefix_cache_hit_rate:.0%}" if m.HasField("prefix_cache_hit_rate") else "-",
                ]
                rows.append(head + model)  # fmt: skip
        output.table(
            ("ENDPOINT", "KIND", "ADDRESS", "HEALTH", "GPU UTIL", "LAST SEEN", "MODEL", "STATE", "REQUESTS", "ACTIVE", "WAITING", "KV", "PREFIX HITS"),
            rows,
        )  # fmt: skip

    return _emit(ctx, args, resp, human)


def endpoints_register(ctx: Ctx, args: argparse.Namespace) -> int:
    labels = dict(key_value(text, "--label") for text in args.label or [])
    ep = pb.Endpoint(
        name=args.name,
        address=args.address,
        metrics_url=args.metrics or "",
        labels=labels,
        gpu_type=args.gpu_type or "",
        gpu_count=args.gpus,
        gpu_memory_bytes=int(args.memory_gb * GIB),
        kind=args.kind,
        flavour=args.flavour or "",
    )
    resp = _call(ctx, "RegisterEndpoint", pb.RegisterEndpointRequest(endpoint=ep))
    return _emit(
        ctx, args, resp, lambda r: print(f"registered endpoint {r.endpoint.name} at {r.endpoint.address}")
    )


def endpoints_deregister(ctx: Ctx, args: argparse.Namespace) -> int:
    _call(ctx, "DeregisterEndpoint", pb.DeregisterEndpointRequest(name=args.name))
    print(f"deregistered endpoint {args.name}")
    return 0


def endpoints_drain(ctx: Ctx, args: argparse.Namespace) -> int:
    if not 0 < args.wait <= MAX_DRAIN_S:
        raise UsageError(f"--wait must be in (0, {MAX_DRAIN_S:g}] seconds")
    eps = _call(ctx, "ListEndpoints", pb.ListEndpointsRequest()).endpoints
    ep = next((e for e in eps if e.name == args.name), None)
    if ep is None:
        raise UsageError(f"no endpoint named {args.name!r} (see `harness endpoints list`)")
    _call(ctx, "DeregisterEndpoint", pb.DeregisterEndpointRequest(name=args.name))
    print(f"endpoint {args.name} deregistered: routers send it no new requests", flush=True)
    if not ep.metrics_url:
        print("it has no metrics URL: cannot watch its in-flight requests; give them time to end")
        return 0
    deadline = time.monotonic() + args.wait
    while True:
        busy = _in_flight(ep.metrics_url)
        if busy < 0:
            print(
                f"harness: cannot read {ep.metrics_url}: endpoint {args.name} is deregistered, but whether "
                "requests are still in flight is unknown; check the server before stopping it",
                file=sys.stderr,
            )
            return 1
        if busy == 0:
            print(f"endpoint {args.name} drained: no requests in flight")
            return 0
        if time.monotonic() >= deadline:
            print(
                f"harness: endpoint {args.name} still has {busy} requests in flight after {args.wait:g}s",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.5)


def _in_flight(metrics_url: str) -> int:
    """Active + waiting requests over the endpoint's models, by its Triton metrics (-1: unknown)."""
    from services.pool.scrape import MAX_METRICS_BYTES, parse_triton_metrics

    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read(MAX_METRICS_BYTES).decode("utf-8", "replace")
        loads = parse_triton_metrics(text).loads.values()
    except (OSError, ValueError):
        return -1
    return sum(load.active + load.waiting for load in loads)


# --- deployments and GPUs -----------------------------------------------------------------
def deployments_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = _call(ctx, "ListDeployments", pb.ListDeploymentsRequest())

    def human(r) -> None:
        rows = [
            [
                d.model,
                d.triton_model,
                f"{d.ready_replicas}/{d.replicas}",
                " ".join(f"{p.endpoint}:{p.gpu}" for p in d.placements) or "-",
                f"{d.memory_bytes / GIB:g}",
                f"{d.idle_ttl.seconds}s" if d.idle_ttl.seconds else "never",
                output.when(d.last_used) if d.HasField("last_used") else "-",
                "yes" if d.scaled_to_zero else "",
                ",".join(d.owners),
            ]
            for d in r.deployments
        ]
        output.table(
            ("MODEL", "TRITON MODEL", "READY", "PLACEMENTS", "GIB", "IDLE TTL", "LAST USED", "SCALED TO 0", "OWNERS"),
            rows,
        )  # fmt: skip

    return _emit(ctx, args, resp, human)


def deployments_deploy(ctx: Ctx, args: argparse.Namespace) -> int:
    req = pb.DeployRequest(model=args.model, replicas=args.replicas, owner=args.owner or "")
    req.idle_ttl.FromSeconds(int(args.idle_ttl))
    resp = _call(ctx, "Deploy", req)
    d = resp.deployment
    where = " ".join(f"{p.endpoint}:{p.gpu}" for p in d.placements) or "nowhere yet"
    return _emit(
        ctx,
        args,
        resp,
        lambda _r: print(f"deployed {d.model} ({d.ready_replicas}/{d.replicas} ready) on {where}"),
    )


def deployments_undeploy(ctx: Ctx, args: argparse.Namespace) -> int:
    _call(ctx, "Undeploy", pb.UndeployRequest(model=args.model, owner=args.owner or "", all=args.all))
    print(f"undeployed {args.model}" + (" (every claim)" if args.all else ""))
    return 0


def deployments_activate(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = _call(ctx, "ActivateDeployment", pb.ActivateDeploymentRequest(model=args.model))
    d = resp.deployment

    def human(r) -> None:
        if r.waking:
            print(
                f"waking {d.model}: loading {d.replicas} replica(s); routers hold its requests until one is ready"
            )
        else:
            print(f"{d.model} is not scaled to zero ({d.ready_replicas}/{d.replicas} ready): nothing to wake")

    return _emit(ctx, args, resp, human)


def gpus_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = _call(ctx, "ListGpus", pb.ListGpusRequest(endpoint=args.endpoint or ""))

    def human(r) -> None:
        rows = [
            [g.endpoint, g.index, g.name, f"{g.memory_used_bytes / GIB:.1f}/{g.memory_total_bytes / GIB:.1f}", f"{g.utilization:.0%}", g.source]
            for g in r.gpus
        ]  # fmt: skip
        output.table(("ENDPOINT", "GPU", "NAME", "MEM GIB USED/TOTAL", "UTIL", "SOURCE"), rows)

    return _emit(ctx, args, resp, human)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    defaults = {"direct_addr_env": DIRECT_ADDR_ENV, "cli_service": "pool"}

    def verb(group, name: str, handler, help_text: str):
        p = group.add_parser(name, parents=[common], help=help_text)
        p.add_argument("--format", choices=FORMATS, default="table", help="table (default) or json")
        p.set_defaults(handler=handler, **defaults)
        return p

    eps = sub.add_parser("endpoints", help="the pool's Triton endpoints: list, register, deregister, drain")
    e = eps.add_subparsers(dest="verb", required=True, metavar="ACTION")
    verb(e, "list", endpoints_list, "endpoints with health and live load per model").add_argument(
        "--model", help="only endpoints with this Triton model ready"
    )
    p = verb(e, "register", endpoints_register, "add (or update) a Triton endpoint")
    p.add_argument("name", help="endpoint name, e.g. triton-0")
    p.add_argument(
        "address", help="host:port of its GRPCInferenceService; for --kind openai, the API's base URL"
    )
    p.add_argument(
        "--kind", choices=("triton", "openai"), default="triton",
        help="triton (gRPC) or openai (vLLM, SGLang, TGI, Ollama, Triton's OpenAI frontend: a fixed deployment)",
    )  # fmt: skip
    p.add_argument(
        "--flavour", choices=("vllm", "sglang", "tgi", "ollama", "triton-openai"),
        help="with --kind openai: which server (its health route and metric names; default vllm)",
    )  # fmt: skip
    p.add_argument("--metrics", help="its metrics URL, e.g. http://host:8002/metrics")
    p.add_argument("--gpu-type", help="e.g. H100-SXM-80GB")
    p.add_argument("--gpus", type=int, default=0, help="number of GPUs")
    p.add_argument("--memory-gb", type=float, default=0.0, help="total GPU memory, GiB")
    p.add_argument("--label", action="append", metavar="K=V", help="a label (repeatable)")
    verb(e, "deregister", endpoints_deregister, "remove an endpoint").add_argument("name")
    p = verb(e, "drain", endpoints_drain, "stop new traffic to an endpoint, wait for its requests")
    p.add_argument("name")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for in-flight requests")

    deps = sub.add_parser("deployments", help="model deployments: list, deploy, undeploy, activate")
    d = deps.add_subparsers(dest="verb", required=True, metavar="ACTION")
    verb(d, "list", deployments_list, "deployments with their placements and idle state")
    p = verb(d, "deploy", deployments_deploy, "load a catalog model on N replicas (a claim)")
    p.add_argument("model", help="catalog model name")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument(
        "--idle-ttl", type=float, default=0, help="unload after this many idle seconds (0 = never)"
    )
    p.add_argument("--owner", help="whose claim (operators only; default: you)")
    p = verb(d, "undeploy", deployments_undeploy, "drop a claim; the last one unloads the model")
    p.add_argument("model")
    p.add_argument("--owner", help="whose claim (operators only; default: you)")
    p.add_argument("--all", action="store_true", help="drop every claim")
    p = verb(d, "activate", deployments_activate, "wake a deployment scaled to zero (returns at once)")
    p.add_argument("model", help="catalog or Triton model name")

    g = sub.add_parser("gpus", parents=[common], help="the pool's GPUs with memory and utilisation")
    g.add_argument("--endpoint", help="only this endpoint's GPUs")
    g.add_argument("--format", choices=FORMATS, default="table", help="table (default) or json")
    g.set_defaults(handler=gpus_list, **defaults)
