"""Render the Envoy front-proxy bootstrap for the Harness mesh (see notes/envoy-mesh.md).

One mTLS listener admits agents only (client cert from the Harness CA with a
``spiffe://<td>/agent/<name>`` URI SAN, the name in agent characters only) and forwards their
identity in XFCC (SANITIZE_SET, so it cannot be forged). Routes go by gRPC service; only idempotent unary methods get retries. Plain
HTTP routes go by path prefix (the OpenAI API under ``/v1/``, MCP at ``/mcp``) to HTTP/1.1 clusters; clients may
speak HTTP/1.1 or HTTP/2 to the listener.
Clusters (clusters.py) speak HTTP/2 + mTLS to the services, with gRPC health checks, outlier detection,
least-request balancing and a retry budget. The local rate limit is wired to runtime keys
and off by default; ops flip it with ``POST /runtime_modify`` on the loopback admin port.

CLI (the compose stack's file): ``python -m services.envoy.compose --out compose/envoy.yaml``
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.envoy import stats
from services.envoy.clusters import upstream_cluster
from services.envoy.key_listener import key_listener
from services.envoy.parts import (
    DOWNSTREAM_TLS,
    HCM,
    LOCAL_RL,
    PREVIOUS_HOSTS,
    ROUTER,
    addr,
    dur,
    tls_certificates,
    uri_san,
)

RUNTIME_RL_ENABLED = "local_rate_limit_enabled"
RUNTIME_RL_ENFORCED = "local_rate_limit_enforced"

# gRPC service prefix -> cluster. The router serves reflection and health for the whole mesh.
DEFAULT_ROUTES: tuple[tuple[str, str], ...] = (
    ("/harness.router.v1.Router/", "router"),
    ("/harness.registry.v1.Registry/", "registry"),
    ("/harness.pool.v1.Pool/", "pool"),
    ("/harness.audit.v1.Audit/", "audit"),
    ("/harness.cost.v1.Cost/", "cost"),
    ("/inference.GRPCInferenceService/", "router"),
    ("/grpc.reflection.v1.ServerReflection/", "router"),
    ("/grpc.reflection.v1alpha.ServerReflection/", "router"),
    ("/grpc.health.v1.Health/", "router"),
)
# Path prefix -> cluster for plain HTTP (the router's OpenAI-compatible API and its MCP endpoint).
DEFAULT_HTTP_ROUTES: tuple[tuple[str, str], ...] = (("/v1/", "router_http"), ("/mcp", "router_http"))
# Cluster -> the service whose certificate answers for it, where it is not the cluster's name.
DEFAULT_IDENTITIES: dict[str, str] = {"router_http": "router"}
# Retry on what a different (or recovered) host can fix; never on app errors like INVALID_ARGUMENT.
RETRY_ON = "unavailable,resource-exhausted,cancelled,connect-failure,refused-stream,reset"


@dataclass(frozen=True)
class EnvoyCerts:
    """Paths as Envoy will see them (may be container paths that do not exist here)."""

    ca: str | Path
    cert: str | Path
    key: str | Path


@dataclass(frozen=True)
class RateLimit:
    """Token bucket shared by all routes; only acts once the runtime keys are raised above 0."""

    max_tokens: int = 2000
    tokens_per_fill: int = 1000
    fill_interval_s: float = 1.0


@dataclass(frozen=True)
class EnvoySpec:
    listen_host: str
    listen_port: int  # 0 = any free port (tests read the bound port from admin /listeners)
    admin_port: int  # admin always binds 127.0.0.1
    certs: EnvoyCerts
    upstreams: Mapping[str, Sequence[tuple[str, int]]]  # cluster -> [(host, port)]
    trust_domain: str = "harness.local"
    routes: Sequence[tuple[str, str]] = DEFAULT_ROUTES  # (path prefix, cluster), first match wins
    http_routes: Sequence[tuple[str, str]] = ()  # (path prefix, HTTP/1.1 cluster): never retried
    idempotent_methods: Sequence[str] = ()  # "/pkg.Service/Method": get an exact route with retries
    upstream_sni: Mapping[str, str] = field(default_factory=dict)  # default: the cluster's identity
    identities: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_IDENTITIES))
    unary_timeout_s: float = 15.0
    per_try_timeout_s: float = 5.0
    num_retries: int = 2
    stream_idle_timeout_s: float = 300.0
    health_check_interval_s: float = 1.0
    rate_limit: RateLimit = RateLimit()
    # A listener serving only /stats/prometheus (plain HTTP, on listen_host) for a Prometheus in
    # another container; None = none (the local stack's Prometheus reads the admin port).
    stats_port: int | None = None
    # A server-TLS listener (no client certificate) with only the HTTP routes, for agents that
    # authenticate with an agent-bound API key (key_listener.py); None = none, 0 = a free port.
    key_listen_port: int | None = None

    def __post_init__(self) -> None:
        missing = sorted({c for _, c in (*self.routes, *self.http_routes)} - set(self.upstreams))
        if missing:
            raise ValueError(f"routes name clusters without upstreams: {missing}")
        empty = sorted(c for c, hosts in self.upstreams.items() if not hosts)
        if empty:
            raise ValueError(f"clusters without hosts: {empty}")
        for m in self.idempotent_methods:
            if not (m.startswith("/") and m.count("/") == 2 and not m.endswith("/")):
                raise ValueError(f"not a gRPC method path: {m!r}")
            self.cluster_for(m)  # raises if no route covers it

    def cluster_for(self, path: str) -> str:
        for prefix, cluster in self.routes:
            if path.startswith(prefix):
                return cluster
        raise ValueError(f"no route covers {path!r}")

    def identity(self, cluster: str) -> str:
        """The service whose certificate must answer for `cluster`."""
        return self.identities.get(cluster, cluster)

    def is_http(self, cluster: str) -> bool:
        return any(c == cluster for _, c in self.http_routes)


def agent_san_regex(trust_domain: str) -> str:
    """RE2 for an agent's URI SAN: the prefix and one name of agent characters, nothing after.

    A prefix match would admit a SAN like ``.../agent/a,URI=.../agent/b``, which Envoy then
    forwards unquoted in XFCC; services refuse such headers too, but they never get this far.
    Envoy caps RE2 program size at 100, so the length and end rules stay with the services.
    """
    return "^" + re.escape(f"spiffe://{trust_domain}/agent/") + "[a-z0-9][a-z0-9-]*$"


def _downstream_tls(spec: EnvoySpec) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS,
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": tls_certificates(spec.certs),
                "validation_context": {
                    "trusted_ca": {"filename": str(spec.certs.ca)},
                    "match_typed_subject_alt_names": uri_san(
                        "safe_regex", {"regex": agent_san_regex(spec.trust_domain)}
                    ),
                },
                "alpn_protocols": ["h2", "http/1.1"],
            },
        },
    }


def _retry_route(spec: EnvoySpec, method: str) -> dict[str, Any]:
    return {
        "name": f"retry{method}",
        "match": {"path": method, "grpc": {}},
        "route": {
            "cluster": spec.cluster_for(method),
            "timeout": dur(spec.unary_timeout_s),
            # Honour the client's deadline (grpc-timeout), capped at the route timeout.
            "max_stream_duration": {"grpc_timeout_header_max": dur(spec.unary_timeout_s)},
            "retry_policy": {
                "retry_on": RETRY_ON,
                "num_retries": spec.num_retries,
                "per_try_timeout": dur(spec.per_try_timeout_s),
                "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
                "retry_host_predicate": [
                    {
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {"@type": PREVIOUS_HOSTS},
                    }
                ],
                "host_selection_retry_max_attempts": 3,
            },
        },
    }


def _prefix_route(spec: EnvoySpec, prefix: str, cluster: str) -> dict[str, Any]:
    # Streams and non-idempotent RPCs: no route timeout, no retries, only an idle timeout.
    return {
        "name": f"service{prefix}",
        "match": {"prefix": prefix, "grpc": {}},
        "route": {
            "cluster": cluster,
            "timeout": "0s",
            "idle_timeout": dur(spec.stream_idle_timeout_s),
            # No max_stream_duration: Envoy forwards the client's grpc-timeout and the service
            # ends the call with DEADLINE_EXCEEDED in its trailers. Envoy's own timer, once the
            # response headers are out, can only reset the stream (RST_STREAM INTERNAL_ERROR),
            # which a client whose timer fires a moment later reports as INTERNAL.
        },
    }


def _http_route(spec: EnvoySpec, prefix: str, cluster: str) -> dict[str, Any]:
    # Server-sent event streams and long completions: no route timeout, only an idle timeout;
    # never retried (a completion is not idempotent).
    return {
        "name": f"http{prefix}",
        "match": {"prefix": prefix},
        "route": {"cluster": cluster, "timeout": "0s", "idle_timeout": dur(spec.stream_idle_timeout_s)},
    }


def _routes(spec: EnvoySpec) -> list[dict[str, Any]]:
    exact = [_retry_route(spec, m) for m in dict.fromkeys(spec.idempotent_methods)]
    grpc = [_prefix_route(spec, p, c) for p, c in spec.routes]
    return exact + grpc + [_http_route(spec, p, c) for p, c in spec.http_routes]


def _fraction(runtime_key: str) -> dict[str, Any]:
    return {"runtime_key": runtime_key, "default_value": {"numerator": 0, "denominator": "HUNDRED"}}


def _http_filters(spec: EnvoySpec) -> list[dict[str, Any]]:
    rl = spec.rate_limit
    return [
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": LOCAL_RL,
                "stat_prefix": "harness_local_rate_limit",
                "token_bucket": {
                    "max_tokens": rl.max_tokens,
                    "tokens_per_fill": rl.tokens_per_fill,
                    "fill_interval": dur(rl.fill_interval_s),
                },
                "filter_enabled": _fraction(RUNTIME_RL_ENABLED),
                "filter_enforced": _fraction(RUNTIME_RL_ENFORCED),
                "rate_limited_as_resource_exhausted": True,
            },
        },
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
    ]


def _listener(spec: EnvoySpec) -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "stat_prefix": "harness_ingress",
        "codec_type": "AUTO",
        # Every caller is external, so Envoy strips x-envoy-* control headers (x-envoy-retry-on,
        # x-envoy-max-retries...) and a client cannot turn retries on for a write. An empty
        # cidr_ranges falls back to trusting RFC1918 + loopback (i.e. every compose peer), so
        # list one range no TCP peer can come from: nothing is internal.
        "use_remote_address": True,
        "internal_address_config": {"cidr_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 32}]},
        # A caller's x-request-id names its call in audit and logs (it is never a key to data).
        "preserve_external_request_id": True,
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"uri": True, "subject": True},
        "stream_idle_timeout": dur(spec.stream_idle_timeout_s),
        "route_config": {
            "name": "harness",
            "virtual_hosts": [{"name": "harness", "domains": ["*"], "routes": _routes(spec)}],
        },
        "http_filters": _http_filters(spec),
    }
    return {
        "name": "harness_ingress",
        "address": addr(spec.listen_host, spec.listen_port),
        "filter_chains": [
            {
                "transport_socket": _downstream_tls(spec),
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
            }
        ],
    }


def _key_listeners(spec: EnvoySpec) -> list[dict[str, Any]]:
    if spec.key_listen_port is None or not spec.http_routes:
        return []
    routes = [_http_route(spec, p, c) for p, c in spec.http_routes]
    idle = dur(spec.stream_idle_timeout_s)
    certs = tls_certificates(spec.certs)
    return [key_listener(spec.listen_host, spec.key_listen_port, certs, routes, _http_filters(spec), idle)]


def render_envoy_config(spec: EnvoySpec) -> dict[str, Any]:
    """The full bootstrap as plain dicts (YAML/JSON-ready)."""
    stats_listeners, stats_clusters = [], []
    if spec.stats_port is not None:
        stats_listeners = [stats.stats_listener(spec.listen_host, spec.stats_port)]
        stats_clusters = [stats.admin_cluster(spec.admin_port)]
    return {
        "admin": {"address": addr("127.0.0.1", spec.admin_port)},
        "layered_runtime": {
            "layers": [
                # Listed so GET /runtime shows the switches; 0 = off (a percentage).
                {"name": "static", "static_layer": {RUNTIME_RL_ENABLED: 0, RUNTIME_RL_ENFORCED: 0}},
                # Without an admin layer POST /runtime_modify is refused.
                {"name": "admin", "admin_layer": {}},
            ]
        },
        "static_resources": {
            "listeners": [_listener(spec), *_key_listeners(spec), *stats_listeners],
            "clusters": [
                *(upstream_cluster(spec, name, hosts) for name, hosts in spec.upstreams.items()),
                *stats_clusters,
            ],
        },
    }


def dump_envoy_config(spec: EnvoySpec, header: str = "") -> str:
    return header + yaml.safe_dump(render_envoy_config(spec), sort_keys=False, width=120)


def write_envoy_config(spec: EnvoySpec, path: Path, header: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_envoy_config(spec, header))
    return path
