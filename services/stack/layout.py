"""Where the local stack puts things and which ports it uses."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StackPorts:
    envoy: int = 8443
    envoy_admin: int = 9901
    envoy_keys: int = 8444  # server-TLS: agents that authenticate with an agent-bound API key
    # One gRPC (an OpenAI simulator: its HTTP API) and one metrics port per engine simulator
    # instance (sim-0, sim-1, sim-2).
    enginesim: tuple[int, ...] = (8001, 8011, 8021)
    enginesim_metrics: tuple[int, ...] = (8002, 8012, 8022)
    # Each simulator's KV-cache events (vLLM's ZeroMQ stream: PUB, replay ROUTER), which the
    # routers follow for precise prefix routing (the pool labels kv-events, kv-events-replay).
    enginesim_kv_events: tuple[int, ...] = (8003, 8013, 8023)
    enginesim_kv_replay: tuple[int, ...] = (8004, 8014, 8024)
    routers: tuple[int, ...] = (50061, 50062)
    router_metrics: tuple[int, ...] = (9461, 9462)
    router_http: tuple[int, ...] = (50063, 50064)  # each router's OpenAI-compatible HTTP API
    registry: int = 50071
    registry_metrics: int = 9471
    pool: int = 50081
    pool_metrics: int = 9481
    audit: int = 50091
    audit_metrics: int = 9491
    cost: int = 50101
    cost_metrics: int = 9501
    prometheus: int = 9090
    demo_ledger: int = 18080  # the demo's ledger tool (HTTP)

    def named(self) -> list[tuple[str, int]]:
        """(what, port) for every port, for clear 'already in use' errors."""
        out: list[tuple[str, int]] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                out.extend((f"{f.name}[{i}]", p) for i, p in enumerate(value))
            else:
                out.append((f.name, value))
        return out

    @classmethod
    def free(cls) -> StackPorts:
        """Any free ports (tests run the stack beside a developer's own)."""
        socks = []

        def grab() -> int:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            return s.getsockname()[1]

        values = {}
        for f in dataclasses.fields(cls):
            default = f.default
            values[f.name] = tuple(grab() for _ in default) if isinstance(default, tuple) else grab()
        for s in socks:
            s.close()
        return cls(**values)


def service_addresses(p: StackPorts) -> dict[str, str]:
    """HARNESS_<SERVICE>_ADDR for each service (the routers: a comma-separated list)."""
    local = "127.0.0.1"
    return {
        "HARNESS_POOL_ADDR": f"{local}:{p.pool}",
        "HARNESS_AUDIT_ADDR": f"{local}:{p.audit}",
        "HARNESS_COST_ADDR": f"{local}:{p.cost}",
        "HARNESS_ROUTER_ADDRS": ",".join(f"{local}:{port}" for port in p.routers),
    }


def ports_in_use(ports: StackPorts, host: str = "127.0.0.1") -> list[str]:
    busy = []
    for what, port in ports.named():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                busy.append(f"port {port} ({what})")
    return busy


@dataclass(frozen=True)
class StackPaths:
    root: Path  # .harness

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def envoy_config(self) -> Path:
        return self.root / "envoy.yaml"

    @property
    def env_file(self) -> Path:
        return self.root / "env"


def redis_prefix_for(root: Path) -> str:
    """Keys of the stack under `root`, so stacks sharing one Redis never share counters."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    return f"harness:{digest}:"
