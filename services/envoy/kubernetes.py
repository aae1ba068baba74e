"""The Kubernetes manifests' Envoy config (`deploy/kubernetes/base/config/envoy.yaml`), from the
same renderer as the local stack and the compose file: each service by its headless Service
`<name>-pods` (every ready pod its own Envoy host, so least-request balancing, active health
checks and outlier detection act per pod), certificates from cert-manager's Secret layout
(`tls.crt`, `tls.key`, `ca.crt`) mounted at /etc/harness/tls. A test keeps the shipped file
equal to this rendering.

CLI: ``python -m services.envoy.kubernetes --out deploy/kubernetes/base/config/envoy.yaml``
(or ``--check FILE``).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.envoy.compose import (
    COMPOSE_ADMIN_PORT,
    COMPOSE_LISTEN_PORT,
    COMPOSE_ROUTER_HTTP_PORT,
    COMPOSE_SERVICE_PORTS,
    COMPOSE_STATS_PORT,
)
from services.envoy.generated import generated_config_main
from services.envoy.methods import idempotent_unary_methods
from services.envoy.render import (
    DEFAULT_HTTP_ROUTES,
    EnvoyCerts,
    EnvoySpec,
    dump_envoy_config,
)

TLS_DIR = "/etc/harness/tls"  # where every pod mounts its cert-manager Secret
# The pods listen on the compose stack's ports; the manifests must agree (a test checks).
SERVICE_PORTS = dict(COMPOSE_SERVICE_PORTS)
ROUTER_HTTP_PORT = COMPOSE_ROUTER_HTTP_PORT
LISTEN_PORT, ADMIN_PORT, STATS_PORT = COMPOSE_LISTEN_PORT, COMPOSE_ADMIN_PORT, COMPOSE_STATS_PORT

HEADER = (
    "# Envoy front proxy for the Harness on Kubernetes. GENERATED, do not edit:\n"
    "#   python -m services.envoy.kubernetes --out deploy/kubernetes/base/config/envoy.yaml\n"
)


def pods_service(name: str) -> str:
    """The headless Service whose DNS name lists every ready pod of `name`."""
    return f"{name}-pods"


def kubernetes_spec(idempotent_methods: Sequence[str] | None = None) -> EnvoySpec:
    if idempotent_methods is None:
        idempotent_methods = idempotent_unary_methods()
    certs = EnvoyCerts(ca=f"{TLS_DIR}/ca.crt", cert=f"{TLS_DIR}/tls.crt", key=f"{TLS_DIR}/tls.key")
    return EnvoySpec(
        listen_host="0.0.0.0",
        listen_port=LISTEN_PORT,
        admin_port=ADMIN_PORT,
        stats_port=STATS_PORT,
        certs=certs,
        upstreams={
            **{name: [(pods_service(name), port)] for name, port in SERVICE_PORTS.items()},
            "router_http": [(pods_service("router"), ROUTER_HTTP_PORT)],
        },
        http_routes=DEFAULT_HTTP_ROUTES,
        idempotent_methods=tuple(idempotent_methods),
    )


def main(argv: Sequence[str] | None = None) -> int:
    text = dump_envoy_config(kubernetes_spec(), HEADER)
    return generated_config_main("python -m services.envoy.kubernetes", __doc__.split("\n")[0], text, argv)


if __name__ == "__main__":
    raise SystemExit(main())
