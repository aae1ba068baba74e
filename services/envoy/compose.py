"""The docker-compose stack's Envoy config (`compose/envoy.yaml`): service names and ports on the
compose network, certificates mounted at /etc/harness/certs. A test keeps the shipped file equal to
this rendering.

CLI: ``python -m services.envoy.compose --out compose/envoy.yaml`` (or ``--check FILE``).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.envoy.generated import generated_config_main
from services.envoy.methods import idempotent_unary_methods
from services.envoy.render import (
    DEFAULT_HTTP_ROUTES,
    EnvoyCerts,
    EnvoySpec,
    dump_envoy_config,
)

COMPOSE_CERTS_DIR = "/etc/harness/certs"
COMPOSE_LISTEN_PORT = 8443
COMPOSE_ADMIN_PORT = 9901
COMPOSE_STATS_PORT = 9902  # /stats/prometheus only, for the compose Prometheus
# Ports the services listen on inside the compose network (the compose file must agree).
COMPOSE_SERVICE_PORTS: dict[str, int] = {
    "router": 50051,
    "registry": 50052,
    "pool": 50053,
    "audit": 50054,
    "cost": 50055,
}
# The router's OpenAI-compatible HTTP API (its --http-port) on the same hosts.
COMPOSE_ROUTER_HTTP_PORT = 8080

HEADER = (
    "# Envoy front proxy for the Harness mesh. GENERATED, do not edit:\n"
    "#   python -m services.envoy.compose --out compose/envoy.yaml\n"
)


def compose_spec(idempotent_methods: Sequence[str] | None = None) -> EnvoySpec:
    """The docker-compose stack: services by compose name, certs mounted at /etc/harness/certs."""
    if idempotent_methods is None:
        idempotent_methods = idempotent_unary_methods()
    certs = EnvoyCerts(
        ca=f"{COMPOSE_CERTS_DIR}/ca.pem",
        cert=f"{COMPOSE_CERTS_DIR}/envoy.pem",
        key=f"{COMPOSE_CERTS_DIR}/envoy.key",
    )
    return EnvoySpec(
        listen_host="0.0.0.0",
        listen_port=COMPOSE_LISTEN_PORT,
        admin_port=COMPOSE_ADMIN_PORT,
        stats_port=COMPOSE_STATS_PORT,
        certs=certs,
        # One DNS name per service; "router" resolves to every replica.
        upstreams={
            **{name: [(name, port)] for name, port in COMPOSE_SERVICE_PORTS.items()},
            "router_http": [("router", COMPOSE_ROUTER_HTTP_PORT)],
        },
        http_routes=DEFAULT_HTTP_ROUTES,
        idempotent_methods=tuple(idempotent_methods),
    )


def main(argv: Sequence[str] | None = None) -> int:
    text = dump_envoy_config(compose_spec(), HEADER)
    return generated_config_main("python -m services.envoy.compose", __doc__.split("\n")[0], text, argv)


if __name__ == "__main__":
    raise SystemExit(main())
