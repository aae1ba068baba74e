"""``python -m services.enginesim``: run the engine simulator as a process.

Logs "ready grpc=HOST:PORT metrics=PORT openai=URL" to stderr once serving (the bound ports,
so port 0 works for tests that start it as a subprocess; "off" for a protocol not served). SIGTERM/SIGINT: stop being ready, give
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
from .faults import FAULT_KINDS, FaultSettings
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
        "--protocol",
        choices=("triton", "openai", "both"),
        default=defaults.protocol,
        help="Triton's gRPC protocol, the OpenAI HTTP API (vLLM's paths and metric names), or both",
    )
    ap.add_argument(
        "--openai-port",
        type=int,
        default=defaults.openai_port,
        help="OpenAI API port, /metrics in vLLM's names on it too (0: any free port)",
    )
    kv = ap.add_argument_group("KV-cache events (vLLM's ZeroMQ stream, as --kv-events-config publishes it)")
    kv.add_argument("--kv-events-port", type=int, default=defaults.kv_events_port,
                    help="PUB port (-1: off, 0: any free port)")  # fmt: skip
    kv.add_argument("--kv-events-replay-port", type=int, default=defaults.kv_events_replay_port,
                    help="replay ROUTER port (-1: off, 0: any free port)")  # fmt: skip
    kv.add_argument("--kv-events-pod", default=defaults.kv_events_pod,
                    help="pod name in the topic kv@<pod>@<model>")  # fmt: skip
    kv.add_argument("--kv-events-format", choices=("map", "array"), default=defaults.kv_events_format,
                    help="event encoding: map (vLLM after PR #42892) or array (before)")  # fmt: skip
    kv.add_argument("--kv-hash-seed", default=defaults.kv_hash_seed,
                    help="seed of the block hash chain (vLLM's PYTHONHASHSEED, sha256_cbor)")  # fmt: skip
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
        "--no-preload",
        action="store_true",
        help="ignore the catalog's preload flags: load only the models named by --load",
    )
    ap.add_argument(
        "--shutdown-grace",
        type=float,
        default=defaults.shutdown_grace_s,
        help="seconds in-flight requests get to finish on SIGTERM/SIGINT",
    )
    ap.add_argument(
        "--startup-delay-s",
        type=float,
        default=defaults.startup_delay_s,
        help="simulated seconds the server is live but not ready before it loads models",
    )
    faults = ap.add_argument_group(
        "failure injection (also settable at runtime: PUT /faults on the metrics port)"
    )
    faults.add_argument(
        "--fault-rate", type=float, default=0.0, help="probability a request gets a fault, 0..1"
    )
    faults.add_argument(
        "--fault-kinds",
        default=",".join(FAULT_KINDS),
        help="comma-separated faults to pick from: %(default)s",
    )
    faults.add_argument(
        "--fault-slow-start-ms",
        type=float,
        default=FaultSettings.slow_start_ms,
        help="extra wait of a slow_start request (simulated ms)",
    )
    faults.add_argument(
        "--fault-midstream-after",
        type=int,
        default=FaultSettings.midstream_after_tokens,
        help="tokens a midstream-fault request yields before failing",
    )
    faults.add_argument(
        "--fault-models", default="", help="comma-separated models faults apply to (default all)"
    )
    faults.add_argument("--fault-seed", type=int, default=None, help="seed for a reproducible fault sequence")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def csv(value: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in value.split(",") if v.strip())

    try:
        fault_settings = FaultSettings(
            rate=args.fault_rate,
            kinds=csv(args.fault_kinds),
            slow_start_ms=args.fault_slow_start_ms,
            midstream_after_tokens=args.fault_midstream_after,
            models=csv(args.fault_models),
        )
        return SimulatorConfig(
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            catalog_path=args.catalog,
            gpu_memory_gb=args.gpu_memory_gb,
            time_scale=args.time_scale,
            load=tuple(args.load),
            preload=not args.no_preload,
            shutdown_grace_s=args.shutdown_grace,
            startup_delay_s=args.startup_delay_s,
            faults=fault_settings,
            fault_seed=args.fault_seed,
            protocol=args.protocol,
            openai_port=args.openai_port,
            kv_events_port=args.kv_events_port,
            kv_events_replay_port=args.kv_events_replay_port,
            kv_events_pod=args.kv_events_pod,
            kv_events_format=args.kv_events_format,
            kv_hash_seed=args.kv_hash_seed,
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
    log.info("ready %s", server.where())
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
