"""`python -m services.common.healthcheck`, the readiness probe of the Kubernetes manifests and the
compose healthchecks: exit 0 only on SERVING, over the service's own mTLS (a server certificate
checked against the CA, the probe's client certificate presented)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.healthcheck import main
from services.devtools.certs import make_certs


async def test_exit_code_follows_the_serving_status_over_mtls(tmp_path, capsys):
    certs = make_certs(tmp_path / "certs", agents=["a"], services=("registry", "router"))
    leaf = certs.services["registry"]
    creds = grpc.ssl_server_credentials(
        [(leaf.key.read_bytes(), leaf.cert.read_bytes())],
        root_certificates=certs.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    probe = certs.services["router"]
    argv = [
        "--addr", f"127.0.0.1:{port}", "--authority", "registry", "--tls-cert", str(probe.cert),
        "--tls-key", str(probe.key), "--tls-ca", str(certs.ca_cert),
    ]  # fmt: skip
    try:
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await asyncio.to_thread(main, argv) == 1
        assert "NOT_SERVING" in capsys.readouterr().out
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await asyncio.to_thread(main, argv) == 0
        # a name the server's certificate does not carry: the handshake fails, so not ready
        wrong = [*argv[:2], "--authority", "cost", *argv[4:]]
        assert await asyncio.to_thread(main, wrong) == 1
        # no client certificate: the server requires one
        assert await asyncio.to_thread(main, ["--addr", f"127.0.0.1:{port}", "--timeout", "2"]) == 1
    finally:
        await server.stop(None)
