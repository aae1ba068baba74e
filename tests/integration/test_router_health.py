"""A router without a registry copy reports NOT_SERVING (gRPC health) and 503 (the OpenAI HTTP
port's /healthz), so Envoy sends its traffic elsewhere; it turns SERVING as soon as the first
copy arrives. The same port serves /mcp."""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.error
import urllib.request

from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ServerConfig, TlsFiles
from services.common.server import open_channel
from services.devtools.certs import make_certs
from services.router.__main__ import start_router
from services.router.config import RouterConfig
from tests.integration.test_router_registry_mirror import Registry

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def test_not_serving_until_the_registry_copy_arrives(tmp_path, test_auth, db_url):
    certs = make_certs(tmp_path / "certs", services=("registry", "router"), agents=())

    def tls(name: str) -> TlsFiles:
        pair = certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    registry = Registry(db_url, test_auth, tls("registry"))
    await registry.start()
    await registry.stop()  # its port is now known and nobody answers there
    nowhere = "127.0.0.1:1"
    cfg = RouterConfig(
        server=ServerConfig(name="router", port=0, metrics_port=None, auth=test_auth, tls=tls("router")),
        registry_addr=f"127.0.0.1:{registry.port}",
        pool_addr=nowhere,
        audit_addr=nowhere,
        cost_addr=nowhere,
        outbox_path=":memory:",
        http_port=0,
    )
    router = await start_router(cfg)
    channel = open_channel(router.address, tls("router"))
    health = health_pb2_grpc.HealthStub(channel)

    async def status(service: str = "") -> int:
        return (await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)).status

    def http_health(path: str = "/healthz", body: bytes | None = None) -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        pair = certs.services["router"]
        context.load_cert_chain(str(pair.cert), str(pair.key))
        context.check_hostname = False
        request = urllib.request.Request(f"https://127.0.0.1:{router.http_port}{path}", data=body)
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        for _ in range(3):
            assert await status() == NOT_SERVING
            assert await status("harness.router.v1.Router") == NOT_SERVING
            assert (await asyncio.to_thread(http_health))[0] == 503
            await asyncio.sleep(0.2)
        await registry.start()
        deadline = time.monotonic() + 10
        while await status() != SERVING:
            assert time.monotonic() < deadline, "still NOT_SERVING 10 s after the registry came up"
            await asyncio.sleep(0.05)
        assert await status("harness.router.v1.Router") == SERVING
        assert (await asyncio.to_thread(http_health))[0] == 200
        # The MCP endpoint shares the port; it acts only for an agent (this is a service's cert).
        status_mcp, body = await asyncio.to_thread(
            http_health, "/mcp", b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
        )
        assert status_mcp == 401 and b"no agent identity" in body
    finally:
        await channel.close()
        await router.stop(grace=0)
        if registry.running is not None:
            await registry.stop()
