"""A real Envoy (rendered config) in front of a tiny grpc.aio upstream: mTLS, XFCC, retries, runtime.

The upstream plays the router: TLS with the router's service cert, client certs required
(so only Envoy gets in), gRPC health, and methods that echo metadata or fail on purpose.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.devtools.certs import CertBundle, LeafPaths, make_certs
from services.devtools.drill_certs import make_foreign_ca_client, make_wrong_san_client
from services.envoy.render import EnvoyCerts, EnvoySpec, RateLimit, write_envoy_config
from tests.helpers.envoy import EnvoyProcess, start_envoy

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROUTER = "harness.router.v1.Router"
ECHO = f"/{ROUTER}/Echo"
FLAKY = f"/{ROUTER}/Flaky"  # declared idempotent: exact route with retries
WRITE = f"/{ROUTER}/Write"  # not idempotent: prefix route, never retried
RATE_LIMIT_TOKENS = 5


class Upstream:
    """Counts attempts per (method, request) so tests can see what Envoy retried."""

    def __init__(self) -> None:
        self.attempts: collections.Counter[tuple[str, bytes]] = collections.Counter()

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.attempts[(ECHO, request)] += 1
        md = [(k, v) for k, v in context.invocation_metadata() if not k.endswith("-bin")]
        return json.dumps(
            {
                "xfcc": [v for k, v in md if k == "x-forwarded-client-cert"],
                "keys": sorted({k for k, _ in md}),
            }
        ).encode()

    async def fail_once(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.attempts[(method, request)] += 1
        if self.attempts[(method, request)] == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails")
        return b"ok"

    def handler(self) -> grpc.GenericRpcHandler:
        async def flaky(req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
            return await self.fail_once(FLAKY, req, ctx)

        async def write(req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
            return await self.fail_once(WRITE, req, ctx)

        # No (de)serializers: requests and responses are raw bytes.
        return grpc.method_handlers_generic_handler(
            ROUTER,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
                "Write": grpc.unary_unary_rpc_method_handler(write),
            },
        )


@dataclass(frozen=True)
class Mesh:
    certs: CertBundle
    envoy: EnvoyProcess
    upstream: Upstream
    port: int  # Envoy's listener


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertBundle:
    return make_certs(tmp_path_factory.mktemp("certs"), agents=["demo-agent"], services=["router"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(certs: CertBundle, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    upstream = Upstream()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((upstream.handler(),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    router = certs.service("router")
    creds = grpc.ssl_server_credentials(
        [(router.key.read_bytes(), router.cert.read_bytes())],
        root_certificates=certs.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    up_port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()

    spec = EnvoySpec(
        listen_host="127.0.0.1",
        listen_port=0,
        admin_port=0,
        certs=EnvoyCerts(ca=certs.ca_cert, cert=certs.envoy.cert, key=certs.envoy.key),
        # "registry" points at the router too: Envoy must refuse it (wrong service identity).
        upstreams={"router": [("127.0.0.1", up_port)], "registry": [("127.0.0.1", up_port)]},
        routes=(
            (f"/{ROUTER}/", "router"),
            ("/harness.registry.v1.Registry/", "registry"),
            ("/grpc.health.v1.Health/", "router"),
        ),
        idempotent_methods=(FLAKY,),
        # A bucket that does not refill during the test: the (N+1)th call is the first rejected.
        rate_limit=RateLimit(RATE_LIMIT_TOKENS, RATE_LIMIT_TOKENS, fill_interval_s=60),
    )
    config = write_envoy_config(spec, tmp_path_factory.mktemp("envoy") / "envoy.yaml")
    envoy = start_envoy(config)
    try:
        await envoy.wait_ready_async(timeout=30, clusters=["router"])
        yield Mesh(certs, envoy, upstream, envoy.listener_port())
    finally:
        envoy.stop()
        await server.stop(None)


def channel(mesh: Mesh, client: LeafPaths | None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=mesh.certs.ca_cert.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.aio.secure_channel(f"localhost:{mesh.port}", creds)


async def call(mesh: Mesh, client: LeafPaths | None, method: str, request: bytes, **kw: object) -> bytes:
    async with channel(mesh, client) as ch:
        return await ch.unary_unary(method)(request, timeout=10, **kw)


def listener_ssl(mesh: Mesh, name: str) -> int:
    """Downstream (listener) TLS counter, e.g. fail_verify_no_cert."""
    stats = mesh.envoy.stats(rf"^listener\..*\.ssl\.{name}$")
    return sum(stats.values())


async def test_agent_call_carries_spiffe_identity_in_xfcc(mesh: Mesh) -> None:
    body = json.loads(await call(mesh, mesh.certs.agent("demo-agent"), ECHO, b"who"))
    (xfcc,) = body["xfcc"]
    assert "URI=spiffe://harness.local/agent/demo-agent" in xfcc
    assert "By=spiffe://harness.local/envoy" in xfcc
    assert 'Subject="CN=demo-agent' in xfcc


async def test_forged_xfcc_never_reaches_the_upstream(mesh: Mesh) -> None:
    forged = "By=spiffe://harness.local/envoy;URI=spiffe://harness.local/agent/admin"
    body = json.loads(
        await call(
            mesh,
            mesh.certs.agent("demo-agent"),
            ECHO,
            b"forge",
            metadata=(("x-forwarded-client-cert", forged),),
        )
    )
    assert len(body["xfcc"]) == 1
    assert "x-envoy-internal" not in body["keys"]  # agents are never "internal" callers
    assert "agent/admin" not in body["xfcc"][0]
    assert "URI=spiffe://harness.local/agent/demo-agent" in body["xfcc"][0]


@pytest.mark.parametrize(
    ("kind", "counter"),
    [("none", "fail_verify_no_cert"), ("foreign", "fail_verify_error"), ("wrong_san", "fail_verify_san")],
)
async def test_bad_client_certs_fail_the_handshake(
    mesh: Mesh, tmp_path: Path, kind: str, counter: str
) -> None:
    client = {
        "none": lambda: None,
        "foreign": lambda: make_foreign_ca_client(tmp_path, "demo-agent"),
        "wrong_san": lambda: make_wrong_san_client(mesh.certs.root, f"user-{os.getpid()}"),
    }[kind]()
    before = listener_ssl(mesh, counter)
    request = f"bad-{kind}".encode()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(mesh, client, ECHO, request)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert listener_ssl(mesh, counter) > before, f"Envoy did not count {counter}"
    assert mesh.upstream.attempts[(ECHO, request)] == 0


async def test_idempotent_method_is_retried(mesh: Mesh) -> None:
    before = mesh.envoy.stat("cluster.router.upstream_rq_retry_success")
    assert await call(mesh, mesh.certs.agent("demo-agent"), FLAKY, b"r1") == b"ok"
    assert mesh.upstream.attempts[(FLAKY, b"r1")] == 2
    assert mesh.envoy.stat("cluster.router.upstream_rq_retry_success") == before + 1


async def test_non_idempotent_method_is_never_retried(mesh: Mesh) -> None:
    # Even when the client asks for retries with Envoy's own headers: they are stripped.
    asks = (("x-envoy-retry-grpc-on", "unavailable"), ("x-envoy-max-retries", "3"))
    for key, metadata in ((b"w1", ()), (b"w2", asks)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(mesh, mesh.certs.agent("demo-agent"), WRITE, key, metadata=metadata)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert mesh.upstream.attempts[(WRITE, key)] == 1


async def test_health_is_routed_to_the_router(mesh: Mesh) -> None:
    async with channel(mesh, mesh.certs.agent("demo-agent")) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_upstream_with_wrong_service_identity_is_refused(mesh: Mesh) -> None:
    # The "registry" cluster reaches a server holding the *router* cert: SAN check fails.
    flags = mesh.envoy.host_health()["registry"]
    assert all("failed_active_hc" in f for f in flags.values()), flags
    assert mesh.envoy.stat("cluster.registry.ssl.fail_verify_san") > 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(mesh, mesh.certs.agent("demo-agent"), "/harness.registry.v1.Registry/GetAgent", b"")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_rate_limit_is_switched_by_runtime(mesh: Mesh) -> None:
    agent = mesh.certs.agent("demo-agent")

    async def burst(n: int) -> collections.Counter[grpc.StatusCode]:
        codes: collections.Counter[grpc.StatusCode] = collections.Counter()
        async with channel(mesh, agent) as ch:
            echo = ch.unary_unary(ECHO)
            for i in range(n):
                try:
                    await echo(f"rl{i}".encode(), timeout=10)
                    codes[grpc.StatusCode.OK] += 1
                except grpc.aio.AioRpcError as e:
                    codes[e.code()] += 1
        return codes

    # Off by default: more calls than the bucket holds all pass.
    assert await burst(3 * RATE_LIMIT_TOKENS) == {grpc.StatusCode.OK: 3 * RATE_LIMIT_TOKENS}
    try:
        body = mesh.envoy.post("/runtime_modify?local_rate_limit_enabled=100&local_rate_limit_enforced=100")
        assert "OK" in body
        codes = await burst(3 * RATE_LIMIT_TOKENS)
        assert codes[grpc.StatusCode.OK] <= RATE_LIMIT_TOKENS
        assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= 2 * RATE_LIMIT_TOKENS
        # Enabled but not enforced: counted, not rejected (the dry-run mode ops use first).
        mesh.envoy.post("/runtime_modify?local_rate_limit_enforced=0")
        assert await burst(RATE_LIMIT_TOKENS) == {grpc.StatusCode.OK: RATE_LIMIT_TOKENS}
        assert "local_rate_limit_enforced" in mesh.envoy.get("/runtime")
    finally:
        mesh.envoy.post("/runtime_modify?local_rate_limit_enabled=0&local_rate_limit_enforced=0")


@pytest.fixture
def lone_envoy(certs: CertBundle, tmp_path: Path) -> Iterator[EnvoyProcess]:
    spec = EnvoySpec(
        listen_host="127.0.0.1",
        listen_port=0,
        admin_port=0,
        certs=EnvoyCerts(ca=certs.ca_cert, cert=certs.envoy.cert, key=certs.envoy.key),
        upstreams={"router": [("127.0.0.1", 1)]},
        routes=((f"/{ROUTER}/", "router"),),
    )
    envoy = start_envoy(write_envoy_config(spec, tmp_path / "envoy.yaml"))
    yield envoy
    envoy.stop()


async def test_start_envoy_stops_cleanly(lone_envoy: EnvoyProcess) -> None:
    await lone_envoy.wait_ready_async(timeout=30)  # no upstream needed: its host stays unhealthy
    assert lone_envoy.listener_port() > 0
    pid = lone_envoy.proc.pid
    assert lone_envoy.stop() == 0  # SIGTERM -> clean exit
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert lone_envoy.stop() == 0  # idempotent
