"""`python -m services.cost`: runs the cost service until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from services.common.server import run_until_signal, setup_logging
from services.cost.config import build_parser, config_from_args
from services.cost.servicer import start_cost


async def _serve(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    running = await start_cost(config_from_args(args))
    await run_until_signal(running)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_serve(argv))


if __name__ == "__main__":
    main()
