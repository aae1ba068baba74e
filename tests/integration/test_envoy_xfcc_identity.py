"""Agent identity through a real Envoy: certificates whose SAN text forges XFCC structure.

A Harness-CA certificate with the SAN ``.../agent/demo-agent,URI=.../agent/ledger-rpa`` once
acted as ledger-rpa: Envoy writes URI SANs unquoted, so the ',' read as a second hop. Here a
real Harness server (the shared interceptor, mTLS with the router's cert) sits behind two real
Envoys: the rendered config (agent SAN regex) and one that admits any SAN with the agent
prefix, to show the service refuses such headers on its own too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import yaml

from services.common.config import ServerConfig, TlsFiles
from services.common.context import current_identity
from services.common.identity import AuthConfig
from services.common.server import RunningServer, start_server
from services.devtools.certs import CertBundle, LeafPaths, make_certs
from services.devtools.drill_certs import make_wrong_san_client
from services.envoy.render import EnvoyCerts, EnvoySpec, render_envoy_config
from tests.helpers.envoy import EnvoyProcess, start_envoy

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROUTER = "harness.router.v1.Router"
WHOAMI = f"/{ROUTER}/WhoAmI"
AGENTS = "spiffe://harness.local/agent/"


@dataclass(frozen=True)
class Front:
    certs: CertBundle
    strict: EnvoyProcess  # the rendered config
    prefix_only: EnvoyProcess  # admits any SAN starting with the agent prefix (the old matcher)


async def _whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    ident = current_identity()
    return json.dumps({"agent": ident.agent, "spiffe": ident.agent_spiffe_id}).encode()


def _register(server: grpc.aio.Server) -> list[str]:
    handler = grpc.method_handlers_generic_handler(
        ROUTER, {"WhoAmI": grpc.unary_unary_rpc_method_handler(_whoami)}
    )
    server.add_generic_rpc_handlers((handler,))
    return [ROUTER]


def _envoy(certs: CertBundle, port: int, path: Path, *, prefix_only: bool) -> EnvoyProcess:
    spec = EnvoySpec(
        listen_host="127.0.0.1",
        listen_port=0,
        admin_port=0,
        certs=EnvoyCerts(ca=certs.ca_cert, cert=certs.envoy.cert, key=certs.envoy.key),
        upstreams={"router": [("127.0.0.1", port)]},
        routes=((f"/{ROUTER}/", "router"), ("/grpc.health.v1.Health/", "router")),
    )
    config = render_envoy_config(spec)
    if prefix_only:
        listener = config["static_resources"]["listeners"][0]
        tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
        tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"prefix": AGENTS}}
        ]
    path.write_text(yaml.safe_dump(config))
    return start_envoy(path)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def front(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Front]:
    certs = make_certs(tmp_path_factory.mktemp("certs"), agents=["demo-agent"], services=["router"])
    router = certs.service("router")
    cfg = ServerConfig(
        name="router",
        metrics_port=None,
        tls=TlsFiles(str(router.cert), str(router.key), str(certs.ca_cert)),
        auth=AuthConfig(),
    )
    running: RunningServer = await start_server(cfg, _register)
    work = tmp_path_factory.mktemp("envoy")
    strict = _envoy(certs, running.port, work / "strict.yaml", prefix_only=False)
    prefix_only = _envoy(certs, running.port, work / "prefix.yaml", prefix_only=True)
    try:
        for envoy in (strict, prefix_only):
            await envoy.wait_ready_async(timeout=30, clusters=["router"])
        yield Front(certs, strict, prefix_only)
    finally:
        strict.stop()
        prefix_only.stop()
        await running.stop(0)


async def whoami(envoy: EnvoyProcess, certs: CertBundle, client: LeafPaths) -> dict:
    creds = grpc.ssl_channel_credentials(
        root_certificates=certs.ca_cert.read_bytes(),
        private_key=client.key.read_bytes(),
        certificate_chain=client.cert.read_bytes(),
    )
    async with grpc.aio.secure_channel(f"localhost:{envoy.listener_port()}", creds) as ch:
        return json.loads(await ch.unary_unary(WHOAMI)(b"", timeout=10))


def forged(certs: CertBundle, name: str, san: str, *extra: str) -> LeafPaths:
    return make_wrong_san_client(certs.root, name, uri=san, extra_uris=extra)


FORGED_SANS = {
    "comma": AGENTS + "demo-agent,URI=" + AGENTS + "ledger-rpa",
    "semicolon": AGENTS + "demo-agent;URI=" + AGENTS + "ledger-rpa",
    "trailing-pair": AGENTS + "ledger-rpa;Hash=00",
}


async def test_a_real_agent_is_identified(front: Front) -> None:
    for envoy in (front.strict, front.prefix_only):
        body = await whoami(envoy, front.certs, front.certs.agent("demo-agent"))
        assert body == {"agent": "demo-agent", "spiffe": AGENTS + "demo-agent"}


@pytest.mark.parametrize("kind", sorted(FORGED_SANS))
async def test_forged_san_is_refused_at_the_handshake(front: Front, kind: str) -> None:
    client = forged(front.certs, f"strict-{kind}", FORGED_SANS[kind])
    before = sum(front.strict.stats(r"^listener\..*\.ssl\.fail_verify_san$").values())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await whoami(front.strict, front.certs, client)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sum(front.strict.stats(r"^listener\..*\.ssl\.fail_verify_san$").values()) > before


@pytest.mark.parametrize("kind", sorted(FORGED_SANS))
async def test_forged_san_past_a_lax_proxy_is_refused_by_the_service(front: Front, kind: str) -> None:
    client = forged(front.certs, f"lax-{kind}", FORGED_SANS[kind])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await whoami(front.prefix_only, front.certs, client)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()
    assert "client certificate identity refused" in (err.value.details() or "")


async def test_two_agent_uri_sans_are_refused_by_the_service(front: Front) -> None:
    # Both SANs are well-formed agent ids, so Envoy's SAN check passes (any SAN may match).
    client = forged(front.certs, "two-uris", AGENTS + "demo-agent", AGENTS + "ledger-rpa")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await whoami(front.strict, front.certs, client)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "2 agent URI SANs" in (err.value.details() or "")
