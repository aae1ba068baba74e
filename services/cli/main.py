"""`harness`: the operator CLI. Subcommands grow with the issues (agents, policies, cost...).

`harness up` starts the local stack; the registry subcommands (agents, versions, traffic, teams,
projects, users, keys, models, tools, policies) reach it through `.harness/env` (see connect.py).
Errors print the gRPC status code and message on stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

import grpc

from services.cli import (
    agent_cmds,
    approvals_cmds,
    audit_cmds,
    catalog_cmds,
    cost_cmds,
    credential_cmds,
    jwt_cmds,
    pool_cmds,
    secret_cmds,
    tenancy_cmds,
    top_cmds,
)
from services.cli.base import Ctx, UsageError
from services.cli.connect import ConfigError, add_connection_args, resolve


def _up(args: argparse.Namespace) -> int:
    from services.stack.layout import StackPorts
    from services.stack.openai_engines import parse_openai_engine_flags
    from services.stack.tritons import parse_triton_flags
    from services.stack.up import UpConfig, run_up

    try:
        tritons = parse_triton_flags(args.triton or [])
        openai_engines = parse_openai_engine_flags(args.openai_engine or [])
    except ValueError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return 2
    ports = StackPorts.free() if args.free_ports else StackPorts()
    extra = {}
    if (tritons or openai_engines) and not args.with_simulators:  # the user's engines replace the simulators
        ports = dataclasses.replace(
            ports, enginesim=(), enginesim_metrics=(), enginesim_kv_events=(), enginesim_kv_replay=()
        )
        extra["simulators"] = ()
    cfg = UpConfig(
        tritons=tritons,
        openai_engines=openai_engines,
        **extra,
        root=Path(args.root),
        ports=ports,
        demo_file=Path(args.demo),
        listen_host=args.listen_host,
        time_scale=args.time_scale,
        timeout_s=args.timeout,
        redis_url=args.redis,
        prometheus=not args.no_prometheus,
        prometheus_scrape_s=args.prometheus_scrape_interval,
    )
    return run_up(cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Harness control plane CLI")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the whole local stack (simulator, services, Envoy) until Ctrl-C")
    up.add_argument("--root", default=".harness", help="state, certs, logs and env file go here")
    up.add_argument("--demo", default="compose/demo.yaml", help="demo data to seed")
    up.add_argument("--listen-host", default="127.0.0.1", help="Envoy's front-door bind address")
    up.add_argument("--time-scale", type=float, default=1.0, help="engine simulator time scale")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for health")
    up.add_argument("--free-ports", action="store_true", help="use any free ports instead of the defaults")
    up.add_argument(
        "--redis",
        default=os.environ.get("HARNESS_REDIS_URL", ""),
        help="Redis URL the two routers share for rate limits, the result cache and budgets (env "
        "HARNESS_REDIS_URL; default: none, each router keeps them in memory and enforces them alone)",
    )
    up.add_argument(
        "--triton", action="append", metavar="NAME=HOST:PORT[,metrics=URL][,header=K:V]",
        help="your own Triton server, registered with the pool in place of the simulators (repeatable; "
        "options: metrics=URL, header=K:V, gpu_type=T, memory_gb=N)",
    )  # fmt: skip
    up.add_argument(
        "--openai-engine", action="append", metavar="NAME=URL[,flavour=vllm][,header=K:V]",
        help="your own OpenAI-compatible server (vLLM, SGLang, TGI, Ollama, Triton's OpenAI frontend), "
        "registered with the pool in place of the simulators (repeatable; options: flavour=vllm|sglang|tgi|"
        "ollama|triton-openai, header=K:V, metrics=URL)",
    )  # fmt: skip
    up.add_argument(
        "--with-simulators", action="store_true",
        help="with --triton/--openai-engine: start the engine simulators too",
    )  # fmt: skip
    up.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus with the stack")
    up.add_argument(
        "--prometheus-scrape-interval", type=float, default=5.0, metavar="SECONDS",
        help="how often Prometheus scrapes the stack (1 to 60 s; default 5)",
    )  # fmt: skip
    up.set_defaults(func=_up)
    common = argparse.ArgumentParser(add_help=False)
    add_connection_args(common)
    modules = (
        agent_cmds,
        tenancy_cmds,
        catalog_cmds,
        jwt_cmds,
        audit_cmds,
        approvals_cmds,
        cost_cmds,
        top_cmds,
        pool_cmds,
        secret_cmds,
    )
    for module in modules:
        module.register(sub, common)
    credential_cmds.register(sub, common)
    return parser


def _run_registry(args: argparse.Namespace) -> int:
    """Runs one registry subcommand; gRPC and config errors become one stderr line."""
    ctx = None
    try:
        ctx = Ctx(resolve(args), json=bool(getattr(args, "json", False)))
        return args.handler(ctx, args)
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        print(f"harness: {name}: {details}", file=sys.stderr)
        if code == grpc.StatusCode.UNAVAILABLE and ctx is not None:
            service = getattr(args, "cli_service", "registry")
            print(f"harness: is the {service} up at {ctx.conn.describe()}?", file=sys.stderr)
        return 1
    except (ConfigError, UsageError) as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return 2
    finally:
        if ctx is not None:
            ctx.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "handler"):
            return _run_registry(args)
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`harness audit export | head`): stop quietly, as Unix tools do.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
