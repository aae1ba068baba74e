"""The compose stack cannot run here (no Docker engine); at least keep it consistent with the
Envoy config it ships: every upstream Envoy routes to listens on the port Envoy expects."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.envoy.compose import COMPOSE_ROUTER_HTTP_PORT, COMPOSE_SERVICE_PORTS, compose_spec

COMPOSE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"


def test_compose_services_listen_where_envoy_routes():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, port in COMPOSE_SERVICE_PORTS.items():
        command = services[name]["command"]
        assert f"--port {port} " in command, f"{name} should listen on {port}: {command}"
        assert f"/services/{name}.pem" in command and f"/services/{name}.key" in command


def test_router_reaches_each_service_on_its_compose_port():
    command = yaml.safe_load(COMPOSE.read_text())["services"]["router"]["command"]
    for name in ("registry", "pool", "audit", "cost"):
        assert f"--{name} {name}:{COMPOSE_SERVICE_PORTS[name]}" in command


def test_router_serves_the_openai_api_where_envoy_sends_v1():
    command = yaml.safe_load(COMPOSE.read_text())["services"]["router"]["command"]
    assert f"--http-port {COMPOSE_ROUTER_HTTP_PORT} " in command
    spec = compose_spec(idempotent_methods=())
    assert spec.upstreams["router_http"] == [("router", COMPOSE_ROUTER_HTTP_PORT)]
    assert ("/v1/", "router_http") in spec.http_routes


def test_demo_models_match_the_simulator_catalog():
    """The registry's memory figure is what the pool places by: it must be the engine's own."""
    from services.enginesim.catalog import load_catalog

    catalog = load_catalog()
    demo = yaml.safe_load((COMPOSE.parent / "demo.yaml").read_text())
    for model in demo["registry"]["models"]:
        spec = catalog.get(model["triton_model"])
        assert spec is not None, f"{model['name']}: no simulator model {model['triton_model']}"
        assert model["memory_gib"] == spec.memory_gb, model["name"]
