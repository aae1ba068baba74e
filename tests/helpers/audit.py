"""An audit service on port 0 with mTLS, as tests need it: events are appended over a producing
service's certificate (the router's), people read over another service's certificate (the CLI's)
with their bearer token."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
from harness.audit.v1 import audit_pb2_grpc
from prometheus_client import CollectorRegistry

from services.audit.config import AuditConfig
from services.audit.servicer import start_audit
from services.common.config import ServerConfig, TlsFiles
from services.common.identity import AuthConfig
from services.common.server import RunningServer, open_channel
from services.devtools.certs import CertBundle, make_certs

CERT_NAMES = ("audit", "router", "cli", "pool")


@dataclass
class AuditMesh:
    running: RunningServer
    certs: CertBundle
    config: AuditConfig
    metrics: CollectorRegistry
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def tls(self, name: str) -> TlsFiles:
        pair = self.certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(self.certs.ca_cert))

    def stub(self, as_service: str = "cli") -> audit_pb2_grpc.AuditStub:
        channel = open_channel(f"127.0.0.1:{self.running.port}", self.tls(as_service))
        self._channels.append(channel)
        return audit_pb2_grpc.AuditStub(channel)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        await self.running.stop(0)


def mesh_certs(directory: Path) -> CertBundle:
    return make_certs(directory, services=CERT_NAMES, agents=())


async def start_tls_audit(
    tmp_path: Path, auth: AuthConfig, db_url: str = "", certs_dir: Path | None = None, **config
) -> AuditMesh:
    certs = mesh_certs(certs_dir or tmp_path / "certs")
    pair = certs.services["audit"]
    server = ServerConfig(
        name="audit", port=0, metrics_port=None, auth=auth,
        tls=TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert)),
    )  # fmt: skip
    if not db_url:
        db_url = f"sqlite:///{tmp_path / 'state' / 'audit.db'}"  # its directory does not exist yet
    elif not db_url.startswith("sqlite"):
        config.setdefault("witness", str(tmp_path / "witness"))
        config.setdefault("witness_key", str(tmp_path / "checkpoint.key"))
    cfg = AuditConfig(server=server, db_url=db_url, **config)
    metrics = CollectorRegistry()
    return AuditMesh(await start_audit(cfg, metrics_registry=metrics), certs, cfg, metrics)
