"""A real registry gRPC server on port 0 over a given store, for integration tests."""

from __future__ import annotations

from services.common.config import ServerConfig, TlsFiles
from services.common.server import start_server
from services.registry.policy import Policy
from services.registry.servicer import RegistryServicer
from services.registry.store import Store
from services.registry.watch import WatchHub


async def start_registry(store: Store, auth, tls: TlsFiles | None = None, hub: WatchHub | None = None):
    """The registry's servicer and interceptors as the service runs them (API keys resolved by
    the servicer itself); plaintext unless `tls`."""
    servicer = RegistryServicer(store, Policy(store), auth.trust_domain, hub)
    cfg = ServerConfig(name="registry", port=0, metrics_port=None, auth=auth, tls=tls or TlsFiles())
    return await start_server(cfg, servicer.register, api_key_resolver=servicer.resolve_api_key)
