"""`harness`: the operator CLI. Subcommands grow with the issues (agents, policies, cost...)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _up(args: argparse.Namespace) -> int:
    from services.stack.layout import StackPorts
    from services.stack.up import UpConfig, run_up

    ports = StackPorts.free() if args.free_ports else StackPorts()
    cfg = UpConfig(
        root=Path(args.root),
        ports=ports,
        demo_file=Path(args.demo),
        listen_host=args.listen_host,
        time_scale=args.time_scale,
        timeout_s=args.timeout,
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
    up.set_defaults(func=_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
