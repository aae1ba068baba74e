"""The compose stack cannot run here (no Docker engine); at least keep it consistent with the
Envoy config it ships: every upstream Envoy routes to listens on the port Envoy expects."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.envoy.compose import COMPOSE_ROUTER_HTTP_PORT, COMPOSE_SERVICE_PORTS, compose_spec

COMPOSE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"


ROUTERS = ("router-1", "router-2")  # replicas behind the network alias Envoy's compose config names


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _flag(command: list[str], name: str) -> str:
    """The value after `--name` in an exec-form command."""
    assert f"--{name}" in command, f"--{name} missing from {command}"
    return command[command.index(f"--{name}") + 1]


def _upstream(name: str) -> list[str]:
    return list(ROUTERS) if name == "router" else [name]


def test_compose_services_listen_where_envoy_routes():
    services = _services()
    for name, port in COMPOSE_SERVICE_PORTS.items():
        for service in _upstream(name):
            command = services[service]["command"]
            assert _flag(command, "port") == str(port), f"{service} should listen on {port}: {command}"
            assert _flag(command, "tls-cert").endswith(f"/services/{name}.pem")
            assert _flag(command, "tls-key").endswith(f"/services/{name}.key")


def test_router_replicas_answer_to_the_name_envoy_routes_to():
    services = _services()
    for router in ROUTERS:
        assert "router" in services[router]["networks"]["default"]["aliases"]


def test_router_reaches_each_service_on_its_compose_port():
    for router in ROUTERS:
        command = _services()[router]["command"]
        for name in ("registry", "pool", "audit", "cost"):
            assert _flag(command, name) == f"{name}:{COMPOSE_SERVICE_PORTS[name]}"


def test_router_serves_the_openai_api_where_envoy_sends_v1():
    for router in ROUTERS:
        assert _flag(_services()[router]["command"], "http-port") == str(COMPOSE_ROUTER_HTTP_PORT)
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
