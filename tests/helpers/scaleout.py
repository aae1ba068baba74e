"""A scaled-out Harness as processes on this machine: the shape of the Kubernetes production
overlay (several routers, audit and cost replicas on one PostgreSQL and one Redis, schema
migrated once beforehand and checked by every pod), for tests and the capacity bench.

Every service is a real `python -m services.<name>` process on free loopback ports with mTLS
certificates from the dev PKI; clients dial the routers directly with an agent certificate
(no Envoy: the identity rule is the same without a proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from harness.cost.v1 import cost_pb2_grpc
from harness.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.config import TlsFiles
from services.common.healthcheck import check
from services.common.identity import mint_jwt
from services.common.server import open_channel
from services.cost.seed import seed_cost
from services.devtools.certs import CertBundle, make_certs
from services.registry.seed import seed_registry
from tests.helpers.envoy import free_port

REPO = Path(__file__).resolve().parents[2]
AGENT = "scale-agent"
MODEL, ENGINE_MODEL = "llama-3-8b", "llama-3-8b-instruct"
RPM = 10  # the rate-limited user's requests per minute
DATA = {
    "registry": {
        "teams": [{"name": "ops"}],
        "projects": [{"name": "scale", "team": "ops"}],
        "users": [
            {"name": "budgeted", "team": "ops"},
            {"name": "limited", "team": "ops", "rpm_limit": RPM},
        ],
        "models": [
            {"name": MODEL, "triton_model": "llama-3-8b-instruct", "memory_gib": 33, "context_length": 8192}
        ],
        "agents": [
            {
                "name": AGENT,
                "project": "scale",
                "versions": [{"version": "v1", "models": [MODEL]}],
                "traffic": [{"version": "v1", "weight": 100}],
                # limits far above any test's rate, so every call runs the rate-limit script in Redis
                "rpm_limit": 1_000_000,
                "tpm_limit": 1_000_000_000,
                "state": "online",
            }
        ],
        "policies": [
            ["p", "role:analyst", "scale", f"agent:{AGENT}", "invoke", "allow"],
            ["p", f"agent:{AGENT}", "scale", f"model:{MODEL}", "invoke", "allow"],
            ["g", "user:budgeted", "role:analyst", "scale"],
            ["g", "user:limited", "role:analyst", "scale"],
        ],
    },
    "cost": {
        "prices": [
            {"kind": "model_input_tokens", "subject": MODEL, "usd": 20},
            {"kind": "model_output_tokens", "subject": MODEL, "usd": 60},
        ]
    },
}


def child_env() -> dict[str, str]:
    """This checkout first on the path, then whatever the caller had (e.g. freshly generated stubs)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path}


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    port: int
    metrics: int
    authority: str = ""  # the name its certificate carries ("" = plaintext)
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env=child_env(), start_new_session=True,
            )  # fmt: skip

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout=30)

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit {self.popen.poll() if self.popen else '-'})\n" + "\n".join(
            text.splitlines()[-lines:]
        )


@dataclass
class Mesh:
    root: Path
    certs: CertBundle
    db_urls: dict[str, str]
    redis_url: str
    redis_prefix: str
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def routers(self) -> list[Proc]:
        return [p for n, p in self.procs.items() if n.startswith("router-")]

    def tls(self, service: str) -> TlsFiles:
        leaf = self.certs.services[service]
        return TlsFiles(str(leaf.cert), str(leaf.key), str(self.certs.ca_cert))

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.procs[name].port}"

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.kill(signal.SIGTERM if p.popen and p.popen.poll() is None else signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.procs.values())

    def warnings(self, prefix: str = "router-") -> str:
        """WARNING/ERROR lines of the processes named `prefix*` (why a budget or limit moved)."""
        out = []
        for p in self.procs.values():
            if p.name.startswith(prefix) and p.log.exists():
                out += [f"{p.name}: {line}" for line in p.log.read_text(errors="replace").splitlines()
                        if " WARNING " in line or " ERROR " in line]  # fmt: skip
        return "\n".join(out[-60:])


def _py(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def migrate(db_urls: dict[str, str]) -> None:
    """What the Kubernetes migration Job runs, once, before any service starts."""
    for service, url in db_urls.items():
        subprocess.run(
            _py(f"services.{service}.migrate", "--db-url", url, "upgrade"), cwd=REPO, check=True,
            env=child_env(), capture_output=True, timeout=300,
        )  # fmt: skip


def migrated_databases(new_db: Callable[[], str]) -> dict[str, str]:
    """A fresh database for each service that keeps one, migrated before anything starts."""
    urls = {name: new_db() for name in ("registry", "pool", "audit", "cost")}
    migrate(urls)
    return urls


def build_mesh(
    root: Path,
    db_urls: dict[str, str],
    redis_url: str,
    redis_prefix: str,
    *,
    routers: int,
    audits: int,
    costs: int,
) -> Mesh:
    """Creates certificates and the process list (nothing started): one simulator, registry,
    pool, `audits` audit and `costs` cost replicas sharing their databases, `routers` routers
    sharing Redis and one redaction key, router i shipping to audit i % audits, cost i % costs."""
    root.mkdir(parents=True, exist_ok=True)
    certs = make_certs(
        root / "certs",
        agents=[AGENT],
        services=("router", "registry", "pool", "audit", "cost", "enginesim", "cli"),
    )
    mesh = Mesh(root, certs, db_urls, redis_url, redis_prefix)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    key = root / "redaction.key"
    key.write_text("ab" * 32)

    def add(name: str, service: str, module: str, *extra: object, tls: bool = True) -> None:
        port, metrics = free_port(), free_port()
        argv = [*_py(module), "--host", "127.0.0.1", "--port", port, "--metrics-port", metrics]
        if tls:
            leaf = certs.services[service]
            argv += ["--tls-cert", leaf.cert, "--tls-key", leaf.key, "--tls-ca", certs.ca_cert]
            argv += ["--jwt-public-key", certs.jwt_public_key]
        proc = Proc(
            name,
            [str(a) for a in (*argv, *extra)],
            logs / f"{name}.log",
            port,
            metrics,
            service if tls else "",
        )
        mesh.procs[name] = proc

    add(
        "sim",
        "enginesim",
        "services.enginesim",
        "--no-preload",
        "--load",
        ENGINE_MODEL,
        "--time-scale",
        "20",
        tls=False,
    )
    add("registry", "registry", "services.registry", "--db-url", db_urls["registry"], "--schema", "check")
    audit_names = [f"audit-{i}" for i in range(audits)]
    for name in audit_names:  # one chain, one witness directory and one signing key for all
        add(name, "audit", "services.audit", "--db-url", db_urls["audit"], "--schema", "check",
            "--witness", root / "witness", "--witness-key", root / "checkpoint.key")  # fmt: skip
    registry = mesh.addr("registry")
    for name in audit_names:
        mesh.procs[name].argv += ["--registry", registry]
    mesh.procs["registry"].argv += ["--audit", mesh.addr(audit_names[0])]
    sim = mesh.procs["sim"]
    add("pool", "pool", "services.pool", "--db-url", db_urls["pool"], "--schema", "check", "--registry", registry,
        "--audit", mesh.addr(audit_names[0]),
        "--no-nvml", "--endpoint", f"name=sim-0,address=127.0.0.1:{sim.port},metrics=http://127.0.0.1:{sim.metrics}"
        "/metrics,gpu_type=H100-SXM-80GB,gpus=1,memory_gb=80")  # fmt: skip
    cost_names = [f"cost-{i}" for i in range(costs)]
    for i, name in enumerate(cost_names):
        add(name, "cost", "services.cost", "--db-url", db_urls["cost"], "--schema", "check",
            "--audit", mesh.addr(audit_names[i % audits]), "--pool", mesh.addr("pool"), "--registry", registry)  # fmt: skip
    for i in range(routers):
        add(f"router-{i}", "router", "services.router", "--http-port", "-1", "--registry", registry,
            "--pool", mesh.addr("pool"), "--audit", mesh.addr(audit_names[i % audits]),
            "--cost", mesh.addr(cost_names[i % costs]), "--outbox", root / f"router-{i}-outbox.db",
            "--redis", redis_url, "--redis-prefix", redis_prefix, "--redaction-key-file", key,
            "--budget-refresh", "0.5", "--budget-local-share", f"{1 / routers:.3f}",
            # A loaded test machine must not pass for a Redis outage (which fails open to each
            # router's local share): outages have their own tests (test_budgets_redis_outage.py).
            "--redis-timeout", "3")  # fmt: skip
    return mesh


def serving(proc: Proc, mesh: Mesh) -> tuple[bool, str]:
    """grpc.health.v1 over the process's own mTLS: the check the Kubernetes readiness probe runs."""
    args = argparse.Namespace(addr=f"127.0.0.1:{proc.port}", service="", authority="", timeout=3.0)
    if proc.authority:
        tls = mesh.tls("cli")
        args.tls_cert, args.tls_key, args.tls_ca = tls.cert, tls.key, tls.ca
    else:
        args.tls_cert = args.tls_key = args.tls_ca = ""
    return check(args)


async def start_all(mesh: Mesh, timeout_s: float = 240.0) -> None:
    """Starts the processes in dependency order, each group once the previous one is SERVING."""
    groups = [["sim", "registry", *[n for n in mesh.procs if n.startswith("audit-")]], ["pool"],
              [n for n in mesh.procs if n.startswith("cost-")], [p.name for p in mesh.routers]]  # fmt: skip
    deadline = time.monotonic() + timeout_s
    for group in groups:
        for name in group:
            mesh.procs[name].start()
        for name in group:
            await until_serving(mesh, mesh.procs[name], deadline)


async def until_serving(mesh: Mesh, proc: Proc, deadline: float) -> None:
    last = ""
    while time.monotonic() < deadline:
        if proc.popen is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited\n{mesh.logs()}")
        ok, last = await asyncio.to_thread(serving, proc, mesh)
        if ok:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{proc.name} not SERVING ({last})\n{mesh.logs()}")


async def seed(m: Mesh) -> None:
    ops = m.tls("cli")
    async with open_channel(m.addr("registry"), ops) as reg, open_channel(m.addr("cost-0"), ops) as cost:
        await seed_registry(registry_pb2_grpc.RegistryStub(reg), DATA, ())
        settings = registry_pb2.JwtSettings(
            issuer="harness", audience="harness", public_key_pem=m.certs.jwt_public_key.read_text()
        )
        await registry_pb2_grpc.RegistryStub(reg).SetJwtSettings(
            registry_pb2.SetJwtSettingsRequest(settings=settings), timeout=10
        )
        await seed_cost(cost_pb2_grpc.CostStub(cost), DATA, ())


def token(m: Mesh, user: str, *roles: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_jwt(m.certs.jwt_private_key.read_bytes(), user, roles=roles)}"),)


def agent_channel(m: Mesh, router: int) -> grpc.aio.Channel:
    leaf = m.certs.agents[AGENT]
    creds = grpc.ssl_channel_credentials(
        m.certs.ca_cert.read_bytes(), leaf.key.read_bytes(), leaf.cert.read_bytes()
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{m.routers[router].port}", creds)
