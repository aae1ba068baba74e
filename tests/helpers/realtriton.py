"""A real tritonserver for tests: `services.devtools.pytriton_llm` in a subprocess.

One per test session (the ``real_triton`` fixture in tests/conftest.py): it takes seconds to
start on this CPU. Tests must leave it as they found it (reload what they unload).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from tests.helpers.envoy import free_port

START_TIMEOUT_S = 180.0


class RealTritonUnavailable(RuntimeError):
    """tritonserver could not be started (PyTriton missing, or it failed to come up)."""


@dataclass
class RealTriton:
    proc: subprocess.Popen
    grpc_port: int
    http_port: int
    metrics_port: int
    models: tuple[str, ...]
    access_token: str | None = None
    log: deque = field(default_factory=lambda: deque(maxlen=400))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_real_triton(*, restricted: bool = False, attempts: int = 3) -> RealTriton:
    """Start tritonserver on free ports; retries when a port was taken in between."""
    try:
        import pytriton  # noqa: F401
    except ImportError as exc:
        raise RealTritonUnavailable("nvidia-pytriton is not installed (make install)") from exc
    error: Exception | None = None
    for _ in range(attempts):
        try:
            return _start_once(restricted)
        except RealTritonUnavailable as exc:
            error = exc
    raise RealTritonUnavailable(f"tritonserver did not start after {attempts} attempts: {error}")


def _start_once(restricted: bool) -> RealTriton:
    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "services.devtools.pytriton_llm"]
    cmd += ["--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port", str(ports[2])]
    if restricted:
        cmd.append("--restricted")
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log: deque = deque(maxlen=400)
    ready: dict = {}
    got_ready = threading.Event()

    def pump() -> None:  # keeps the pipe drained for the server's whole life
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line.rstrip())
            if line.startswith('{"ready"'):
                ready.update(json.loads(line))
                got_ready.set()
        got_ready.set()

    threading.Thread(target=pump, name="realtriton-log", daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not got_ready.wait(0.5):
        if time.monotonic() > deadline:
            break
    if not ready:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        tail = "\n".join(list(log)[-30:])
        raise RealTritonUnavailable(f"tritonserver exited or timed out (rc={proc.returncode}):\n{tail}")
    return RealTriton(
        proc=proc,
        grpc_port=ready["grpc_port"],
        http_port=ready["http_port"],
        metrics_port=ready["metrics_port"],
        models=tuple(ready["models"]),
        access_token=ready.get("access_token"),
        log=log,
    )
