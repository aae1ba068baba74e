"""`python -m services.pool`: serve the pool (gRPC :50081, metrics :9481 by default).

Endpoints to probe come from `--config pool.yaml` and/or repeated `--endpoint K=V,...` flags
(format in services/pool/config.py); more can be registered at run time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.common.config import add_server_args, server_config_from_args
from services.common.server import run_until_signal, setup_logging
from services.pool.app import serve
from services.pool.config import PoolConfig, add_pool_args, pool_config_from_args


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, PoolConfig]:
    parser = argparse.ArgumentParser(prog="python -m services.pool", description=__doc__)
    add_server_args(parser, default_port=50081, default_metrics=9481)
    add_pool_args(parser)
    args = parser.parse_args(argv)
    try:
        pool_config = pool_config_from_args(args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    return args, pool_config


async def _main(args: argparse.Namespace, pool_config: PoolConfig) -> None:
    running, _app = await serve(pool_config, server_config_from_args("pool", args))
    await run_until_signal(running)


def main(argv: list[str] | None = None) -> int:
    args, pool_config = parse_args(argv)
    setup_logging(args.log_level)
    asyncio.run(_main(args, pool_config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
