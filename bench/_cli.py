"""Command line of the closed-loop benches: the options they all take, and how they start."""

from __future__ import annotations

import argparse
import asyncio
import contextlib


def closed_loop_parser(
    description: str, requests: tuple[int, int], quick_help: str
) -> argparse.ArgumentParser:
    """The options every closed-loop bench takes: --quick, --requests (full, quick) and --concurrency."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument(
        "--requests",
        type=int,
        default=None,
        help=f"requests per path and level ({requests[0]}; quick {requests[1]})",
    )
    p.add_argument(
        "--concurrency", type=lambda t: [int(x) for x in t.split(",") if x.strip()], default=[1, 16, 64]
    )
    p.set_defaults(_requests=requests)
    return p


def run_closed_loop(p: argparse.ArgumentParser, argv: list[str] | None, main_async) -> None:
    """Parses, fills --requests from --quick, and runs `main_async(args)` (Ctrl-C stops it quietly)."""
    args = p.parse_args(argv)
    if args.requests is None:
        args.requests = args._requests[1] if args.quick else args._requests[0]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))
