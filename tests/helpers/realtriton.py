"""A real tritonserver for tests: `services.devtools.pytriton_llm` in a subprocess.

One per test session (the ``real_triton`` fixture in tests/conftest.py): it takes seconds to
start on this CPU. Tests must leave it as they found it (reload what they unload).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from services.devtools.pytriton_llm import DECOUPLED_MODEL, PLAIN_MODEL, SPARE_MODEL
from tests.helpers.envoy import free_port

START_TIMEOUT_S = 180.0
MODELS = (DECOUPLED_MODEL, PLAIN_MODEL, SPARE_MODEL)


class RealTritonUnavailable(RuntimeError):
    """tritonserver could not be started (PyTriton missing, or it failed to come up)."""


@dataclass
class RealTriton:
    proc: subprocess.Popen
    grpc_port: int
    http_port: int
    metrics_port: int
    models: tuple[str, ...]
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


def start_real_triton(*, attempts: int = 3) -> RealTriton:
    """Start tritonserver on free ports; retries when a port was taken in between."""
    try:
        import pytriton  # noqa: F401
    except ImportError as exc:
        raise RealTritonUnavailable("nvidia-pytriton is not installed (make install)") from exc
    error: Exception | None = None
    for _ in range(attempts):
        try:
            return _start_once()
        except RealTritonUnavailable as exc:
            error = exc
    raise RealTritonUnavailable(f"tritonserver did not start after {attempts} attempts: {error}")


def _start_once() -> RealTriton:
    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "services.devtools.pytriton_llm"]
    cmd += ["--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port", str(ports[2])]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log: deque = deque(maxlen=400)

    def pump() -> None:  # keeps the pipe drained for the server's whole life
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line.rstrip())

    threading.Thread(target=pump, name="realtriton-log", daemon=True).start()
    server = RealTriton(proc, *ports, models=MODELS, log=log)
    # Readiness is checked here over gRPC rather than by waiting for the devtool's ready line:
    # PyTriton's own post-start model check sometimes waits its full 60 s per model.
    deadline = time.monotonic() + START_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if _serves(server):
            return server
        time.sleep(0.5)
    server.stop()
    tail = "\n".join(list(log)[-30:])
    raise RealTritonUnavailable(f"tritonserver exited or timed out (rc={proc.returncode}):\n{tail}")


def _serves(server: RealTriton) -> bool:
    """Ready, every model READY, and one inference answered (PyTriton's proxy is up)."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pbg

    with grpc.insecure_channel(server.address) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        try:
            if not stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                return False
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=2)
            if {m.name for m in index.models if m.state == "READY"} < set(server.models):
                return False
            req = pb.ModelInferRequest(model_name=PLAIN_MODEL)
            for name, dtype, raw in (
                ("text_input", "BYTES", b"\x02\x00\x00\x00hi"),
                ("max_tokens", "INT32", b"\x01\x00\x00\x00"),
            ):
                req.inputs.add(name=name, datatype=dtype, shape=[1, 1])
                req.raw_input_contents.append(raw)
            stub.ModelInfer(req, timeout=10)
        except grpc.RpcError:
            return False
    return True
