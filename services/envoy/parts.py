"""Small pieces of Envoy's v3 configuration shared by the front door's renderer (render.py, clusters.py), its
key listener and the ext_proc listener (extproc.py): type URLs, durations, addresses, TLS
certificates and the HTTP protocol options of an upstream cluster."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.envoy.render import EnvoyCerts

TYPE_PREFIX = "type.googleapis.com/envoy."
HCM = TYPE_PREFIX + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
DOWNSTREAM_TLS = TYPE_PREFIX + "extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = TYPE_PREFIX + "extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
LOCAL_RL = TYPE_PREFIX + "extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ROUTER = TYPE_PREFIX + "extensions.filters.http.router.v3.Router"
PREVIOUS_HOSTS = TYPE_PREFIX + "extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"


def dur(seconds: float) -> str:
    """Protobuf Duration JSON ("0.025s", "300s"); never exponent notation."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def addr(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def tls_certificates(certs: EnvoyCerts) -> list[dict[str, Any]]:
    return [{"certificate_chain": {"filename": str(certs.cert)}, "private_key": {"filename": str(certs.key)}}]


def uri_san(match: str, value: Any) -> list[dict[str, Any]]:
    return [{"san_type": "URI", "matcher": {match: value}}]


def protocol_options(http1: bool) -> dict[str, Any]:
    if http1:
        return {
            "@type": "type.googleapis.com/" + HTTP_OPTS_KEY,
            # Closed before the upstream's own keep-alive (75 s) drops it under a request.
            "common_http_protocol_options": {"idle_timeout": "60s"},
            "explicit_http_config": {"http_protocol_options": {}},
        }
    return {
        "@type": "type.googleapis.com/" + HTTP_OPTS_KEY,
        "explicit_http_config": {
            "http2_protocol_options": {
                # PINGs find a dead peer on an idle pooled connection before a request does.
                "connection_keepalive": {"interval": "30s", "timeout": "5s"},
            }
        },
    }
