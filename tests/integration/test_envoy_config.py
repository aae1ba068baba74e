"""The Envoy renderer: what it emits, that Envoy 1.40 accepts it, and the shipped compose config."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from grpc_tools import protoc

from services.devtools.certs import make_certs
from services.envoy import compose, render
from services.envoy import methods as methods_mod
from services.envoy.methods import ProtosNotGeneratedError, idempotent_unary_methods
from services.envoy.render import EnvoyCerts, EnvoySpec, render_envoy_config, write_envoy_config
from tests.helpers.envoy import validate_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE_YAML = REPO / "compose" / "envoy.yaml"

TEST_PROTO = """
syntax = "proto3";
package idemtest.v1;
message Req { string id = 1; }
message Resp { string id = 1; }
service Demo {
  rpc Get(Req) returns (Resp) { option idempotency_level = NO_SIDE_EFFECTS; }
  rpc Put(Req) returns (Resp) { option idempotency_level = IDEMPOTENT; }
  rpc Create(Req) returns (Resp);
  rpc Watch(Req) returns (stream Resp) { option idempotency_level = NO_SIDE_EFFECTS; }
  rpc Upload(stream Req) returns (Resp) { option idempotency_level = IDEMPOTENT; }
}
service Other {
  rpc Peek(Req) returns (Resp) { option idempotency_level = NO_SIDE_EFFECTS; }
}
"""


@pytest.fixture(scope="module")
def idem_module(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("proto")
    (root / "idemtest" / "v1").mkdir(parents=True)
    (root / "idemtest" / "v1" / "idem.proto").write_text(TEST_PROTO)
    rc = protoc.main(["protoc", f"-I{root}", f"--python_out={root}", "idemtest/v1/idem.proto"])
    assert rc == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        return importlib.import_module("idemtest.v1.idem_pb2")


def test_idempotent_methods_from_descriptors(idem_module: Any) -> None:
    assert idempotent_unary_methods([idem_module]) == [
        "/idemtest.v1.Demo/Get",
        "/idemtest.v1.Demo/Put",
        "/idemtest.v1.Other/Peek",
    ]
    # A FileDescriptor works as well as the module.
    assert idempotent_unary_methods([idem_module.DESCRIPTOR]) == idempotent_unary_methods([idem_module])
    assert idempotent_unary_methods([]) == []


def test_idempotent_methods_rejects_non_descriptors() -> None:
    with pytest.raises(TypeError):
        idempotent_unary_methods([object()])  # type: ignore[list-item]


def test_idempotent_methods_default_to_the_harness_protos() -> None:
    try:
        found = idempotent_unary_methods()
    except ProtosNotGeneratedError as e:
        pytest.skip(str(e))
    assert "/harness.registry.v1.Registry/GetAgent" in found
    assert "/harness.registry.v1.Registry/CreateAgent" not in found  # a write without the option
    assert all(m.split("/")[1].startswith("harness.") for m in found)


def test_missing_protos_raise_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(methods_mod, "HARNESS_PACKAGES", ("no_such_pkg_xyz.v1",))
    with pytest.raises(ProtosNotGeneratedError, match="gen"):
        idempotent_unary_methods()


# ---------------------------------------------------------------- rendering

IDEMPOTENT = ("/harness.registry.v1.Registry/GetAgent", "/harness.router.v1.Router/Echo")


def local_spec(certs_dir: Path, **over: Any) -> EnvoySpec:
    b = make_certs(certs_dir, agents=["demo-agent"], services=["router"])
    kwargs: dict[str, Any] = dict(
        listen_host="127.0.0.1",
        listen_port=0,
        admin_port=0,
        certs=EnvoyCerts(ca=b.ca_cert, cert=b.envoy.cert, key=b.envoy.key),
        upstreams={
            c: [("127.0.0.1", 50051 + i)]
            for i, c in enumerate(["router", "registry", "pool", "audit", "cost"])
        },
        idempotent_methods=IDEMPOTENT,
    )
    kwargs.update(over)
    return EnvoySpec(**kwargs)


@pytest.fixture
def spec(tmp_path: Path) -> EnvoySpec:
    return local_spec(tmp_path / "certs")


def hcm_of(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def routes_of(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return hcm_of(cfg)["route_config"]["virtual_hosts"][0]["routes"]


def test_listener_requires_agent_client_certs(spec: EnvoySpec) -> None:
    cfg = render_envoy_config(spec)
    (listener,) = cfg["static_resources"]["listeners"]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    ctx = tls["common_tls_context"]
    assert ctx["alpn_protocols"] == ["h2", "http/1.1"]  # gRPC, and HTTP/1.1 clients of /v1/
    assert ctx["validation_context"]["trusted_ca"]["filename"] == str(spec.certs.ca)
    assert ctx["validation_context"]["match_typed_subject_alt_names"] == [
        {
            "san_type": "URI",
            "matcher": {"safe_regex": {"regex": r"^spiffe://harness\.local/agent/[a-z0-9][a-z0-9-]*$"}},
        }
    ]
    hcm = hcm_of(cfg)
    assert hcm["forward_client_cert_details"] == "SANITIZE_SET"
    assert hcm["set_current_client_cert_details"] == {"uri": True, "subject": True}


def test_admin_is_loopback_and_runtime_is_modifiable(spec: EnvoySpec) -> None:
    cfg = render_envoy_config(spec)
    assert cfg["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    layers = cfg["layered_runtime"]["layers"]
    assert any("admin_layer" in layer for layer in layers)


def test_routes_exact_retry_routes_come_first(spec: EnvoySpec) -> None:
    routes = routes_of(render_envoy_config(spec))
    exact = [r for r in routes if "path" in r["match"]]
    prefix = [r for r in routes if "prefix" in r["match"]]
    assert [r["match"]["path"] for r in exact] == list(IDEMPOTENT)
    assert routes[: len(exact)] == exact  # before any prefix route, or they would never match
    for r in exact:
        policy = r["route"]["retry_policy"]
        assert policy["num_retries"] == 2
        assert {"unavailable", "resource-exhausted", "cancelled"} <= set(policy["retry_on"].split(","))
        assert policy["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
        assert policy["host_selection_retry_max_attempts"] >= 2
        assert r["route"]["timeout"] not in ("0s", "0")
        assert r["match"]["grpc"] == {}
    by_path = {r["match"]["path"]: r["route"]["cluster"] for r in exact}
    assert by_path == {IDEMPOTENT[0]: "registry", IDEMPOTENT[1]: "router"}
    for r in prefix:
        assert "retry_policy" not in r["route"]
        assert r["route"]["timeout"] == "0s"
        assert r["route"]["idle_timeout"]


def test_prefix_routes_cover_every_service(spec: EnvoySpec) -> None:
    prefix = {
        r["match"]["prefix"]: r["route"]["cluster"]
        for r in routes_of(render_envoy_config(spec))
        if "prefix" in r["match"]
    }
    assert prefix == {
        "/harness.router.v1.Router/": "router",
        "/harness.registry.v1.Registry/": "registry",
        "/harness.pool.v1.Pool/": "pool",
        "/harness.audit.v1.Audit/": "audit",
        "/harness.cost.v1.Cost/": "cost",
        "/inference.GRPCInferenceService/": "router",
        "/grpc.reflection.v1.ServerReflection/": "router",
        "/grpc.reflection.v1alpha.ServerReflection/": "router",
        "/grpc.health.v1.Health/": "router",
    }


def test_rate_limit_is_runtime_switched_and_off_by_default(spec: EnvoySpec) -> None:
    filters = hcm_of(render_envoy_config(spec))["http_filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.http.local_ratelimit", "envoy.filters.http.router"]
    rl = filters[0]["typed_config"]
    assert rl["rate_limited_as_resource_exhausted"] is True
    assert rl["filter_enabled"]["runtime_key"] == render.RUNTIME_RL_ENABLED
    assert rl["filter_enforced"]["runtime_key"] == render.RUNTIME_RL_ENFORCED
    assert rl["filter_enabled"]["default_value"]["numerator"] == 0
    assert rl["filter_enforced"]["default_value"]["numerator"] == 0


def test_clusters_are_h2_mtls_health_checked_and_least_request(spec: EnvoySpec) -> None:
    clusters = {c["name"]: c for c in render_envoy_config(spec)["static_resources"]["clusters"]}
    assert set(clusters) == {"router", "registry", "pool", "audit", "cost"}
    for name, c in clusters.items():
        assert c["type"] == "STATIC"  # IP endpoints
        assert c["lb_policy"] == "LEAST_REQUEST" and c["least_request_lb_config"]["choice_count"] == 2
        opts = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in opts["explicit_http_config"]
        tls = c["transport_socket"]["typed_config"]
        assert tls["sni"] == name
        assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
            {"san_type": "URI", "matcher": {"exact": f"spiffe://harness.local/service/{name}"}}
        ]
        (hc,) = c["health_checks"]
        assert "grpc_health_check" in hc and hc["interval"] == "1s"
        assert c["outlier_detection"]["max_ejection_percent"] == 100
        assert "retry_budget" in c["circuit_breakers"]["thresholds"][0]


def test_http_routes_go_by_path_to_http1_clusters_of_the_routers_identity(tmp_path: Path) -> None:
    names = ["router", "registry", "pool", "audit", "cost", "router_http"]
    upstreams = {c: [("127.0.0.1", 50051 + i)] for i, c in enumerate(names)}
    spec = local_spec(tmp_path, upstreams=upstreams, http_routes=render.DEFAULT_HTTP_ROUTES)
    cfg = render_envoy_config(spec)
    assert hcm_of(cfg)["preserve_external_request_id"] is True  # x-request-id from the caller
    routes = routes_of(cfg)
    assert routes[-2:] == [
        {
            "name": f"http{prefix}",
            "match": {"prefix": prefix},  # no grpc match: plain HTTP requests (OpenAI API, MCP)
            "route": {"cluster": "router_http", "timeout": "0s", "idle_timeout": "300s"},
        }
        for prefix in ("/v1/", "/mcp")
    ]
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    http = clusters["router_http"]
    opts = http["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http_protocol_options" in opts["explicit_http_config"]
    tls = http["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["alpn_protocols"] == ["http/1.1"]
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://harness.local/service/router"}}
    ]
    assert http["health_checks"][0]["http_health_check"] == {"path": "/healthz"}
    assert "grpc_health_check" in clusters["router"]["health_checks"][0]
    assert_valid(write_envoy_config(spec, tmp_path / "envoy.yaml"))


def test_dns_names_use_strict_dns(tmp_path: Path) -> None:
    names = ["router", "registry", "pool", "audit", "cost"]
    upstreams = {c: [(c, 50051)] for c in names}
    spec = local_spec(tmp_path, upstreams=upstreams, upstream_sni={"router": "router.internal"})
    clusters = {c["name"]: c for c in render_envoy_config(spec)["static_resources"]["clusters"]}
    assert clusters["router"]["type"] == "STRICT_DNS"
    assert clusters["router"]["transport_socket"]["typed_config"]["sni"] == "router.internal"


@pytest.mark.parametrize(
    ("over", "msg"),
    [
        ({"upstreams": {"router": [("127.0.0.1", 1)]}}, "without upstreams"),
        ({"idempotent_methods": ("/unknown.Svc/Get",)}, "no route covers"),
        ({"http_routes": (("/v1/", "router_http"),)}, "without upstreams"),
        ({"idempotent_methods": ("/harness.router.v1.Router/",)}, "not a gRPC method"),
    ],
)
def test_spec_rejects_inconsistent_input(tmp_path: Path, over: dict[str, Any], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        local_spec(tmp_path, **over)


# ---------------------------------------------------------------- envoy --mode validate


def assert_valid(path: Path) -> None:
    result = validate_config(path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Deprecated field" not in out, out  # deprecated fields get removed in later releases


def test_envoy_accepts_rendered_local_config(spec: EnvoySpec, tmp_path: Path) -> None:
    path = write_envoy_config(spec, tmp_path / "envoy.yaml")
    assert_valid(path)


def test_envoy_rejects_unknown_fields(spec: EnvoySpec, tmp_path: Path) -> None:
    # Guards the test above: validation must really look at the fields.
    cfg = render_envoy_config(spec)
    cfg["static_resources"]["clusters"][0]["no_such_field"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert validate_config(path).returncode != 0


def test_envoy_accepts_shipped_compose_config(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs", agents=[], services=[])
    text = COMPOSE_YAML.read_text()
    assert compose.COMPOSE_CERTS_DIR in text
    # Envoy opens the cert files while validating; point them at real (temporary) ones.
    path = tmp_path / "compose-envoy.yaml"
    path.write_text(text.replace(compose.COMPOSE_CERTS_DIR, str(certs.root)))
    assert_valid(path)


def test_shipped_compose_config_matches_the_renderer() -> None:
    try:
        spec = compose.compose_spec()
    except ProtosNotGeneratedError as e:
        pytest.skip(str(e))
    shipped = yaml.safe_load(COMPOSE_YAML.read_text())
    assert shipped == render_envoy_config(spec), (
        "compose/envoy.yaml is stale: python -m services.envoy.compose --out compose/envoy.yaml"
    )
    assert compose.main(["--check", str(COMPOSE_YAML)]) == 0


def test_compose_config_shape() -> None:
    cfg = yaml.safe_load(COMPOSE_YAML.read_text())
    listener = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert (listener["address"], listener["port_value"]) == ("0.0.0.0", 8443)
    assert cfg["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    assert set(clusters) == {"router", "router_http", "registry", "pool", "audit", "cost", "envoy_admin"}
    router = clusters["router"]
    assert router["type"] == "STRICT_DNS"  # every replica behind the "router" DNS name
    (ep,) = router["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert ep["endpoint"]["address"]["socket_address"]["address"] == "router"
    assert COMPOSE_YAML.read_text().startswith("# Envoy front proxy")
