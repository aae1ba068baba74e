"""The server-TLS listener for agents that cannot present a client certificate.

An agent whose registry record allows it (`harness agents api-key-auth AGENT on`) may call with
an API key bound to it instead: this listener serves TLS with Envoy's certificate but asks for no
client certificate, carries only the HTTP routes (the OpenAI API and MCP), and strips any
`x-forwarded-client-cert` a client sends (it sets none: there is no client certificate), so the
router learns the agent from the bound key alone and refuses any other credential without an
agent. Everything after identity (policy, budgets, audit) is the same as on the mTLS listener.
"""

from __future__ import annotations

from typing import Any

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
NAME = "harness_key_ingress"


def key_listener(
    host: str,
    port: int,
    tls_certificates: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    http_filters: list[dict[str, Any]],
    stream_idle_timeout: str,
) -> dict[str, Any]:
    hcm = {
        "@type": _HCM,
        "stat_prefix": NAME,
        "codec_type": "AUTO",
        "use_remote_address": True,  # as the mTLS listener: every caller is external
        "internal_address_config": {"cidr_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 32}]},
        "preserve_external_request_id": True,
        "forward_client_cert_details": "SANITIZE",  # a client's own XFCC never reaches the router
        "stream_idle_timeout": stream_idle_timeout,
        "route_config": {
            "name": "harness_key",
            "virtual_hosts": [{"name": "harness_key", "domains": ["*"], "routes": routes}],
        },
        "http_filters": http_filters,
    }
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _DOWNSTREAM_TLS,
            "require_client_certificate": False,
            "common_tls_context": {
                "tls_certificates": tls_certificates,
                "alpn_protocols": ["h2", "http/1.1"],
            },
        },
    }
    return {
        "name": NAME,
        "address": {"socket_address": {"address": host, "port_value": port}},
        "filter_chains": [
            {
                "transport_socket": tls,
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
            }
        ],
    }
