"""`python -m services.audit`: runs the audit service until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from services.audit.config import build_parser, config_from_args
from services.audit.servicer import start_audit
from services.common.jwt_settings import follow_registry_jwt_settings
from services.common.server import run_until_signal, setup_logging


async def _serve(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    config = config_from_args(args)
    running = await start_audit(config)
    if config.registry_addr:
        follow_registry_jwt_settings(running, config.registry_addr, config.server.tls)
    await run_until_signal(running)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_serve(argv))


if __name__ == "__main__":
    main()
