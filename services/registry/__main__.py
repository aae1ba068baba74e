"""``python -m services.registry``: run the registry until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from services.common.server import run_until_signal, setup_logging
from services.registry.app import parse_args, serve


async def _main() -> None:
    config = parse_args()
    setup_logging(config.log_level)
    running = await serve(config)
    await run_until_signal(running)


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
