"""How `harness up` waits for its children and seeds them: each service until it answers gRPC
health, the demo ledger, the user's servers' models into the demo catalog, every simulator's
models ready in the pool, the registry and cost seeds, every router holding both, then Envoy
and Prometheus (a part of `Stack`, up.py)."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness.cost.v1 import cost_pb2_grpc
from harness.pool.v1 import pool_pb2, pool_pb2_grpc
from harness.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.config import TlsFiles
from services.common.metrics_page import scrape
from services.common.server import open_channel
from services.stack import demo_tools
from services.stack import prometheus as prom
from services.stack.catalog_map import map_demo_catalog, served_models


class StackError(Exception):
    """The stack could not start; the message says why and what to do."""


class StartupChecks:
    """Waiting and seeding, mixed into `Stack` (which holds the config, children and paths)."""

    def _cli_tls(self) -> TlsFiles:
        assert self.certs is not None
        leaf = self.certs.services["cli"]
        return TlsFiles(str(leaf.cert), str(leaf.key), str(self.certs.ca_cert))

    async def _until(self, what: str, probe, deadline: float) -> None:
        last = "not tried"
        while time.monotonic() < deadline:
            self.sup.check()
            try:
                if await probe():
                    return
                last = "not ready"
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            except OSError as exc:
                last = str(exc)
            await asyncio.sleep(0.2)
        raise StackError(
            f"{what} not healthy after {self.cfg.timeout_s:.0f}s ({last}); see {self.paths.logs}/"
        )

    async def _serving(self, channel: grpc.aio.Channel) -> bool:
        resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    async def _wait_and_seed(self) -> None:
        from services.cost.seed import seed_cost
        from services.registry.seed import seed_registry

        p = self.cfg.ports
        deadline = time.monotonic() + self.cfg.timeout_s
        tls = self._cli_tls()
        # Triton-protocol simulators answer gRPC health; OpenAI ones are awaited through the pool.
        sims = {sim.spec.name: grpc.aio.insecure_channel(sim.address) for sim in self.sims if not sim.openai}
        targets = {
            "registry": p.registry, "pool": p.pool, "audit": p.audit, "cost": p.cost,
            **{f"router-{i + 1}": port for i, port in enumerate(p.routers)},
        }  # fmt: skip
        channels = {name: open_channel(f"127.0.0.1:{port}", tls) for name, port in targets.items()}
        try:
            for name, ch in sims.items():  # SERVING once its startup models are loaded
                await self._until(f"engine simulator {name}", lambda ch=ch: self._serving(ch), deadline)
            for name, ch in channels.items():
                await self._until(name, lambda ch=ch: self._serving(ch), deadline)
            ledger = p.demo_ledger
            await self._until(
                "demo ledger tool", lambda: asyncio.to_thread(demo_tools.ledger_ready, ledger), deadline
            )
            pool = pool_pb2_grpc.PoolStub(channels["pool"])
            await self._map_catalog(pool, deadline)
            # Before the seeds: a seeded agent's warm-up asks the pool for its models, and a
            # simulator the pool has not yet probed healthy would get a needless second replica.
            wanted = {sim.spec.name: set(sim.spec.models) for sim in self.sims}
            # Healthy, whatever they serve.
            wanted.update({t.name: set() for t in (*self.cfg.tritons, *self.cfg.openai_engines)})

            async def models_ready() -> bool:
                resp = await pool.ListEndpoints(pool_pb2.ListEndpointsRequest(), timeout=1.0)
                seen = {
                    ep.name: {m.name for m in ep.models if m.state == pool_pb2.MODEL_STATE_READY}
                    for ep in resp.endpoints
                    if ep.health == pool_pb2.ENDPOINT_HEALTH_HEALTHY
                }
                return all(name in seen and models <= seen[name] for name, models in wanted.items())

            await self._until("every simulator's models ready in the pool", models_ready, deadline)
            registry = registry_pb2_grpc.RegistryStub(channels["registry"])
            await seed_registry(registry, self.demo, ())
            # The registry holds the JWT settings; routers follow them through Watch.
            assert self.certs is not None and self.certs.jwt_public_key is not None
            settings = registry_pb2.JwtSettings(
                issuer="harness", audience="harness", public_key_pem=self.certs.jwt_public_key.read_text()
            )
            await registry.SetJwtSettings(registry_pb2.SetJwtSettingsRequest(settings=settings), timeout=5.0)
            await seed_cost(cost_pb2_grpc.CostStub(channels["cost"]), self.demo, ())
            await self._routers_hold_the_seeds(time.time(), deadline)

            self._start_envoy()
            await self._until("envoy", self._envoy_ready, deadline)
            if self.cfg.prometheus:
                self._start_prometheus()
                url = self.prometheus_url
                await self._until("prometheus", lambda: asyncio.to_thread(prom.ready, url), deadline)
        finally:
            for ch in (*sims.values(), *channels.values()):
                await ch.close()

    async def _routers_hold_the_seeds(self, seeded_at: float, deadline: float) -> None:
        """Every router has applied the seeded registry revision (its Watch) and asked the cost
        service for budgets since they were seeded (its poll), so the first call after "healthy"
        finds the demo agents and their budgets on whichever router it reaches."""
        p = self.cfg.ports
        page = f"http://127.0.0.1:{p.registry_metrics}/metrics"
        revision = (await asyncio.to_thread(scrape, page)).get(("harness_registry_revision", ()), 0.0)

        async def holds(url: str) -> bool:
            got = await asyncio.to_thread(scrape, url)
            return (
                got.get(("harness_registry_mirror_revision", ()), -1.0) >= revision
                and got.get(("harness_router_budgets_as_of_timestamp_seconds", ()), 0.0) >= seeded_at
            )

        for i, port in enumerate(p.router_metrics):
            url = f"http://127.0.0.1:{port}/metrics"
            await self._until(f"router-{i + 1} holding the seeds", lambda url=url: holds(url), deadline)

    async def _map_catalog(self, pool: pool_pb2_grpc.PoolStub, deadline: float) -> None:
        """The user's servers' models into the demo catalog, before it is seeded (catalog_map.py)."""
        names = {t.name for t in (*self.cfg.tritons, *self.cfg.openai_engines)}
        if not names:
            return
        served = await served_models(pool, names, deadline)
        if served is None:
            raise StackError(
                f"your engines {sorted(names)} are not healthy in the pool after {self.cfg.timeout_s:.0f}s; "
                f"check their addresses and see {self.paths.logs}/pool.log"
            )
        self.demo, self.catalog_lines = map_demo_catalog(self.demo, served, keep_demo_models=bool(self.sims))

    async def _envoy_ready(self) -> bool:
        return await asyncio.to_thread(self._envoy_clusters_healthy)

    def _envoy_clusters_healthy(self) -> bool:
        import urllib.request

        url = f"http://127.0.0.1:{self.cfg.ports.envoy_admin}/clusters?format=json"
        with urllib.request.urlopen(url, timeout=1) as r:
            body = r.read().decode()
        # Every cluster host must have passed its active gRPC health check.
        return '"health_status"' in body and "failed_active_health_check" not in body
