"""Every Harness service as real servers on port 0 (SQLite under a temp dir, mTLS between them),
for the fuzz suite: registry (seeded with the demo tenancy), pool, audit, cost, and a router
following them. The fuzz client speaks to each with a service certificate and an admin token,
so requests get past authorization into validation; the router it calls as an agent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness.registry.v1.registry_pb2_grpc import RegistryStub

from services.audit.config import AuditConfig
from services.audit.servicer import start_audit
from services.common.config import ServerConfig, TlsFiles
from services.common.server import RunningServer, open_channel, start_server
from services.cost.config import CostConfig
from services.cost.servicer import start_cost
from services.devtools.certs import make_certs
from services.pool.app import serve as serve_pool
from services.pool.catalog import ModelSpec
from services.pool.config import PoolConfig
from services.pool.state import GIB
from services.registry.policy import Policy
from services.registry.seed import seed_registry
from services.registry.servicer import RegistryServicer
from services.registry.store import Store
from services.router.__main__ import start_router
from services.router.config import RouterConfig
from tests.helpers.grpc import agent_metadata, user_metadata
from tests.integration.test_registry_server import DEMO

SERVICES = ("registry", "pool", "audit", "cost", "router", "cli")


@dataclass
class Mesh:
    servers: dict[str, RunningServer]
    admin: tuple
    agent: tuple
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _closers: list = field(default_factory=list)

    async def serving(self, name: str) -> int:
        stub = health_pb2_grpc.HealthStub(self.channels[name])
        return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        for name in ("router", "cost", "audit", "pool", "registry"):
            await self.servers[name].stop(0)
        for close in self._closers:
            close()


async def start_mesh(root: Path, auth, mint_token, db_urls: dict[str, str] | None = None) -> Mesh:
    """`db_urls` names each store's database (registry, audit, cost); default SQLite under root."""
    db = {
        "registry": f"sqlite:///{root / 'registry.db'}",
        "audit": f"sqlite:///{root / 'a' / 'audit.db'}",
        "cost": f"sqlite:///{root / 'c' / 'cost.db'}",
        **(db_urls or {}),
    }
    certs = make_certs(root / "certs", services=SERVICES, agents=())

    def tls(name: str) -> TlsFiles:
        pair = certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    def server(name: str) -> ServerConfig:
        return ServerConfig(name=name, port=0, metrics_port=None, auth=auth, tls=tls(name))

    store = Store(db["registry"])
    servicer = RegistryServicer(store, Policy(store), auth.trust_domain)
    servers = {
        "registry": await start_server(
            server("registry"), servicer.register, api_key_resolver=servicer.resolve_api_key
        )
    }
    pool_config = PoolConfig(
        endpoints=(), nvml=False, models=(ModelSpec("llama-3-8b", "llama-3-8b-instruct", 16 * GIB),)
    )
    servers["pool"], _app = await serve_pool(pool_config, server("pool"))
    audit = AuditConfig(
        server=server("audit"),
        db_url=db["audit"],
        witness=str(root / "witness"),
        witness_key=str(root / "checkpoint.key"),
    )
    servers["audit"] = await start_audit(audit)
    servers["cost"] = await start_cost(CostConfig(server=server("cost"), db_url=db["cost"]))
    address = {name: f"127.0.0.1:{running.port}" for name, running in servers.items()}
    router_config = RouterConfig(
        server=ServerConfig(name="router", port=0, metrics_port=None, auth=auth),  # behind "Envoy"
        registry_addr=address["registry"],
        pool_addr=address["pool"],
        audit_addr=address["audit"],
        cost_addr=address["cost"],
        outbox_path=str(root / "outbox.db"),
    )
    servers["router"] = await start_router(router_config, client_tls=tls("router"))
    channels = {name: open_channel(address[name], tls("router")) for name in address}
    channels["router"] = grpc.aio.insecure_channel(servers["router"].address)
    token = mint_token("alice", "admin")
    mesh = Mesh(servers, user_metadata(token), agent_metadata("demo-agent", token), channels, [store.close])
    seed = {"registry": {**DEMO["registry"], "policies": [
        *DEMO["registry"]["policies"], ["p", "agent:demo-agent", "ledger", "tool:ledger", "invoke", "allow"]
    ]}}  # fmt: skip
    await seed_registry(RegistryStub(channels["registry"]), seed, ())
    return mesh
