"""The Envoy-floor bench path (bench/_envoy_floor.py): the front door's mTLS listener, unchanged
but for its routes, proxying the OpenAI API straight to one engine."""

import copy

from bench._envoy_floor import ENGINE_CLUSTER, floor_config
from services.envoy.render import DEFAULT_HTTP_ROUTES, EnvoyCerts, EnvoySpec, render_envoy_config

UPSTREAMS = ("router", "router_http", "registry", "pool", "audit", "cost")


def front_door() -> dict:
    spec = EnvoySpec(
        "127.0.0.1", 8443, 9901, EnvoyCerts("ca", "cert", "key"), {n: [("127.0.0.1", 1)] for n in UPSTREAMS},
        http_routes=DEFAULT_HTTP_ROUTES, key_listen_port=8444,
    )  # fmt: skip
    return render_envoy_config(spec)


def hcm_of(listener: dict) -> dict:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def test_the_floor_keeps_the_front_doors_listener_and_sends_v1_to_the_engine_only():
    base = front_door()
    cfg = floor_config(base, listen_port=7000, admin_port=7001, engine_url="http://127.0.0.1:5555/v1")
    (listener,) = cfg["static_resources"]["listeners"]
    door = base["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 7000
    assert listener["filter_chains"][0]["transport_socket"] == door["filter_chains"][0]["transport_socket"]
    ours, theirs = copy.deepcopy(hcm_of(listener)), copy.deepcopy(hcm_of(door))
    routes = ours.pop("route_config")["virtual_hosts"][0]["routes"]
    for hcm in (ours, theirs):
        hcm.pop("stat_prefix")
    theirs.pop("route_config")
    assert ours == theirs  # codec, XFCC, timeouts and filters as the front door's
    assert [(r["match"]["prefix"], r["route"]["cluster"]) for r in routes] == [("/v1/", ENGINE_CLUSTER)]

    (cluster,) = cfg["static_resources"]["clusters"]
    template = next(c for c in base["static_resources"]["clusters"] if c["name"] == "router_http")
    assert cluster["name"] == ENGINE_CLUSTER and "transport_socket" not in cluster  # the engine is plaintext
    assert cluster["typed_extension_protocol_options"] == template["typed_extension_protocol_options"]
    assert cluster["circuit_breakers"] == template["circuit_breakers"]
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 5555}
    assert base["static_resources"]["listeners"][0]["name"] == "harness_ingress"  # the input is untouched


def test_an_https_upstream_stands_in_for_the_router_with_its_tls_and_health_check():
    base = front_door()
    cfg = floor_config(base, listen_port=7000, admin_port=7001, engine_url="https://127.0.0.1:6666")
    (cluster,) = cfg["static_resources"]["clusters"]
    template = next(c for c in base["static_resources"]["clusters"] if c["name"] == "router_http")
    assert cluster["transport_socket"] == template["transport_socket"]  # mTLS pinned to the router
    assert cluster["health_checks"] == template["health_checks"]  # the router's /healthz
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 6666}
