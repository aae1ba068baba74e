"""A plain-HTTP listener that serves only Envoy's `/stats/prometheus`, for a Prometheus in
another container (compose): the admin port itself stays on 127.0.0.1, since it can also change
runtime settings and drain listeners."""

from __future__ import annotations

from typing import Any

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ADMIN_CLUSTER = "envoy_admin"
STATS_PATH = "/stats/prometheus"


def _addr(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def stats_listener(host: str, port: int) -> dict[str, Any]:
    """Forwards GET /stats/prometheus to the admin cluster; every other path is a 404."""
    route_config = {
        "virtual_hosts": [
            {
                "name": "stats",
                "domains": ["*"],
                "routes": [{"match": {"path": STATS_PATH}, "route": {"cluster": ADMIN_CLUSTER}}],
            }
        ]
    }
    hcm = {
        "@type": _HCM,
        "stat_prefix": "prometheus_stats",
        "route_config": route_config,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    return {
        "name": "prometheus_stats",
        "address": _addr(host, port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def admin_cluster(admin_port: int) -> dict[str, Any]:
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr("127.0.0.1", admin_port)}}]}],
        },
    }
