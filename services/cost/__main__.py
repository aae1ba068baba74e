"""`python -m services.cost`: runs the cost service until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from services.common.jwt_settings import follow_registry_jwt_settings
from services.common.server import run_until_signal, setup_logging
from services.cost.config import build_parser, config_from_args
from services.cost.fleet_source import live_fleet
from services.cost.servicer import start_cost


async def _serve(argv: list[str] | None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging(args.log_level)
    fleet = live_fleet(config.pool_addr, config.registry_addr, config.server.tls, ttl_s=config.fleet_ttl_s)
    running = await start_cost(config, fleet=fleet)
    if fleet is not None:
        running.on_stop(fleet.close)
    if config.registry_addr:  # user tokens are verified with the registry's JWT settings
        follow_registry_jwt_settings(running, config.registry_addr, config.server.tls)
    await run_until_signal(running)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_serve(argv))


if __name__ == "__main__":
    main()
