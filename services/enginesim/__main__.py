"""``python -m services.enginesim``: run the engine simulator as a process.

Logs "ready grpc=HOST:PORT metrics=PORT" to stderr once serving (the bound ports, so port 0
works for tests that start it as a subprocess). SIGTERM/SIGINT: stop being ready, give
in-flight requests --shutdown-grace seconds, then exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from .app import start_server
from .catalog import CatalogError
from .config import SimulatorConfig
from .simulator import InsufficientMemoryError

log = logging.getLogger("enginesim")


def parse_args(argv: list[str] | None = None) -> SimulatorConfig:
    defaults = SimulatorConfig()
    ap = argparse.ArgumentParser(prog="python -m services.enginesim", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default=defaults.host, help="bind address for gRPC and metrics")
    ap.add_argument("--port", type=int, default=defaults.port, help="gRPC port (0: any free port)")
    ap.add_argument(
        "--metrics-port",
        type=int,
        default=defaults.metrics_port,
        help="HTTP /metrics port (0: any free port, -1: off)",
    )
    ap.add_argument(
        "--catalog", type=Path, default=None, help="model catalog YAML (default: packaged models.yaml)"
    )
    ap.add_argument(
        "--gpu-memory-gb", type=float, default=defaults.gpu_memory_gb, help="simulated GPU memory"
    )
    ap.add_argument(
        "--time-scale",
        type=float,
        default=defaults.time_scale,
        help="simulated time runs this many times faster than real time",
    )
    ap.add_argument(
        "--load",
        nargs="*",
        default=[],
        metavar="MODEL",
        help="models to load at startup besides the catalog's preload ones",
    )
    ap.add_argument(
        "--shutdown-grace",
        type=float,
        default=defaults.shutdown_grace_s,
        help="seconds in-flight requests get to finish on SIGTERM/SIGINT",
    )
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return SimulatorConfig(
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            catalog_path=args.catalog,
            gpu_memory_gb=args.gpu_memory_gb,
            time_scale=args.time_scale,
            load=tuple(args.load),
            shutdown_grace_s=args.shutdown_grace,
        )
    except ValueError as exc:
        ap.error(str(exc))


async def run(config: SimulatorConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(start_server(config))
    # A signal during a long startup load must not wait for the load to finish.
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        log.info("stopped during startup")
        return
    stopping.cancel()
    server = starting.result()
    log.info("ready grpc=%s metrics=%s", server.address, server.metrics_port)
    await stop.wait()
    log.info("shutting down (grace %.1fs)", config.shutdown_grace_s)
    await server.stop()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        asyncio.run(run(config))
    except (CatalogError, InsufficientMemoryError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
