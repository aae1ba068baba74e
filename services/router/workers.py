"""A router that uses every core: `--workers N` runs N router processes on one port.

Python runs one thread of Python at a time, so one router process uses one core. With N > 1
this process becomes a small supervisor: it starts N worker processes with the same arguments,
each listening on the same gRPC (and OpenAI HTTP) port with SO_REUSEPORT, so the kernel spreads
new connections over them. Per-process state stays consistent the way it does across router
replicas: shared counters (rate limits, budgets, the result cache) live in Redis, registry and
pool state arrive by each worker's own Watch streams. What each worker must not share, it gets
its own copy of: a metrics port (the base port + its index) and an outbox file. A worker that
dies is restarted; SIGTERM is passed on to every worker, which drains in its grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("harness.router.workers")
RESTART_DELAY_S = 1.0


def workers_for(requested: int, redis_url: str) -> int:
    """`--workers`: 1 unless asked (each worker's metrics are on their own port, which a scrape
    config must list); 0 asks for every core, which needs Redis: without it each process would
    enforce rate limits and budgets alone (N processes, N times the limit)."""
    if requested > 0:
        return requested
    if requested == 0 and redis_url:
        return os.cpu_count() or 1
    return 1


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def worker_outbox(outbox: str, port: int, index: int) -> str:
    base = Path(outbox) if outbox else Path(f".harness/state/router-{port}-outbox.db")
    return str(base.with_name(f"{base.stem}-w{index}{base.suffix}"))


def worker_argv(
    argv: Sequence[str],
    index: int,
    *,
    port: int,
    metrics_port: int | None,
    http_port: int | None,
    outbox: str,
) -> list[str]:
    """The worker's command line: the supervisor's own arguments, then what is the worker's own
    (argparse lets a later flag win)."""
    own = ["--workers", "1", "--worker-index", str(index), "--port", str(port), "--outbox", outbox]
    if metrics_port is not None:
        own += ["--metrics-port", str(metrics_port + index if metrics_port else 0)]
    if http_port is not None:
        own += ["--http-port", str(http_port)]
    return [sys.executable, "-m", "services.router", *argv, *own]


class Supervisor:
    def __init__(self, commands: list[list[str]], grace_s: float) -> None:
        self.commands = commands
        self.grace_s = grace_s
        self.procs: list[asyncio.subprocess.Process | None] = [None] * len(commands)
        self.stopping = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        keepers = [asyncio.create_task(self._keep(i)) for i in range(len(self.commands))]
        await stop.wait()
        self.stopping = True
        await self._stop_all()
        for task in keepers:
            task.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)

    async def _keep(self, index: int) -> None:
        """Runs worker `index`, restarting it when it exits while the supervisor serves."""
        while not self.stopping:
            proc = await asyncio.create_subprocess_exec(*self.commands[index])
            self.procs[index] = proc
            log.info("router worker %d started (pid %d)", index, proc.pid)
            code = await proc.wait()
            if self.stopping:
                return
            log.error("router worker %d (pid %d) exited with %s; restarting it", index, proc.pid, code)
            await asyncio.sleep(RESTART_DELAY_S)

    async def _stop_all(self) -> None:
        live = [p for p in self.procs if p is not None and p.returncode is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.grace_s + 5):
                await asyncio.gather(*(p.wait() for p in live))
        except TimeoutError:
            for proc in live:
                if proc.returncode is None:
                    proc.kill()


def supervise(argv: Sequence[str], workers: int, host: str, port: int, metrics_port, http_port, outbox: str,
              grace_s: float) -> None:  # fmt: skip
    """Runs `workers` router processes on one port until SIGTERM (a port of 0 is chosen here, once,
    so that every worker listens on the same one)."""
    port = port or free_port(host)
    if http_port == 0:
        http_port = free_port(host)
    commands = [
        worker_argv(
            argv,
            i,
            port=port,
            metrics_port=metrics_port,
            http_port=http_port,
            outbox=worker_outbox(outbox, port, i),
        )
        for i in range(workers)
    ]
    log.info("router: %d workers on %s:%d (SO_REUSEPORT)", workers, host, port)
    asyncio.run(Supervisor(commands, grace_s).run())
