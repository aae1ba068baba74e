"""The front door's upstream clusters (render.py): HTTP/2 + mTLS to each service (HTTP/1.1 for the
plain-HTTP clusters), pinned to the service's own SPIFFE identity, with health checks, outlier
detection, least-request balancing and a retry budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from services.envoy.parts import (
    HTTP_OPTS_KEY,
    UPSTREAM_TLS,
    addr,
    dur,
    is_ip,
    protocol_options,
    tls_certificates,
    uri_san,
)

if TYPE_CHECKING:
    from services.envoy.render import EnvoySpec

HTTP_HEALTH_PATH = "/healthz"


def _upstream_tls(spec: EnvoySpec, cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM_TLS,
            "sni": spec.upstream_sni.get(cluster, spec.identity(cluster)),
            "common_tls_context": {
                "tls_certificates": tls_certificates(spec.certs),
                "validation_context": {
                    "trusted_ca": {"filename": str(spec.certs.ca)},
                    # Only the real service may answer for its cluster, not any cert from our CA.
                    "match_typed_subject_alt_names": uri_san(
                        "exact", f"spiffe://{spec.trust_domain}/service/{spec.identity(cluster)}"
                    ),
                },
                "alpn_protocols": ["http/1.1"] if spec.is_http(cluster) else ["h2"],
            },
        },
    }


def upstream_cluster(spec: EnvoySpec, name: str, hosts: Sequence[tuple[str, int]]) -> dict[str, Any]:
    static = all(is_ip(h) for h, _ in hosts)
    interval = spec.health_check_interval_s
    cluster: dict[str, Any] = {
        "name": name,
        # STRICT_DNS keeps every A record (e.g. compose's 2 router replicas) as its own host.
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "least_request_lb_config": {"choice_count": 2},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(h, p)}} for h, p in hosts]}],
        },
        "typed_extension_protocol_options": {HTTP_OPTS_KEY: protocol_options(spec.is_http(name))},
        "transport_socket": _upstream_tls(spec, name),
        "health_checks": [
            {
                "timeout": dur(max(interval, 1.0)),
                "interval": dur(interval),
                # Default is 60s while a cluster is idle; ops want an idle service's state fresh.
                "no_traffic_interval": dur(max(5 * interval, 5.0)),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                **(
                    {"http_health_check": {"path": HTTP_HEALTH_PATH}}
                    if spec.is_http(name)
                    else {"grpc_health_check": {}}
                ),
            }
        ],
        "outlier_detection": {
            # gRPC statuses count via their HTTP mapping (UNAVAILABLE=503, DEADLINE_EXCEEDED=504).
            "consecutive_gateway_failure": 3,
            "enforcing_consecutive_gateway_failure": 100,  # default 0 = detect but never eject
            "consecutive_5xx": 10,  # app errors (INTERNAL, UNIMPLEMENTED) eject only when persistent
            "interval": "5s",
            "base_ejection_time": "15s",
            "max_ejection_time": "120s",
            # With 1-2 hosts the default 10% ejects nothing. If all are out, the 50% panic
            # threshold routes to every host again rather than failing everything.
            "max_ejection_percent": 100,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 4096,
                    "max_pending_requests": 4096,
                    "max_requests": 8192,
                    # Retries may add at most 20% load on top of live requests (retry storms).
                    "retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 4},
                    "track_remaining": True,
                }
            ]
        },
    }
    if not static:
        cluster["dns_lookup_family"] = "V4_ONLY"
    return cluster
