"""The floor of the mandated topology: an Envoy with the stack's own mTLS listener that proxies
the OpenAI API straight to one engine, with no router behind it.

Derived from the front door's bootstrap (`harness up` writes it to .harness/envoy.yaml): the same
listener (TLS context, client-certificate check, codec, XFCC, timeouts and HTTP filters) with only
its `/v1/` route, and that route's cluster (the router's HTTP cluster: same HTTP/1.1 protocol
options, balancing, circuit breakers and outlier detection) pointed at the engine. The engine
speaks plaintext HTTP, as it does to the routers, so this cluster has no upstream TLS; its health
check asks the engine's /health. Envoy starts with the stack's own flags.

With an https:// upstream the cluster stays the router's in full (mTLS pinned to the router's
identity, its /healthz check) and only its address changes: that upstream stands in for a router
(bench/_http_relay.py, serving with the router's certificate).
"""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from services.envoy.parts import addr

FLOOR = "envoy_floor"
ENGINE_CLUSTER = "engine"
OPENAI_PREFIX = "/v1/"


def floor_config(
    config: dict[str, Any], listen_port: int, admin_port: int, engine_url: str
) -> dict[str, Any]:
    """The front door's bootstrap turned into mTLS listener -> `/v1/` -> the engine (a new dict)."""
    cfg = copy.deepcopy(config)
    cfg["admin"]["address"] = addr("127.0.0.1", admin_port)
    resources = cfg["static_resources"]
    listener = resources["listeners"][0]  # the mTLS listener (then the API-key and stats ones)
    host = listener["address"]["socket_address"]["address"]
    listener.update(name=FLOOR, address=addr(host, listen_port))
    resources["listeners"] = [listener]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = FLOOR
    vhost = hcm["route_config"]["virtual_hosts"][0]
    route = next(r for r in vhost["routes"] if r["match"].get("prefix") == OPENAI_PREFIX)
    template = next(c for c in resources["clusters"] if c["name"] == route["route"]["cluster"])
    route["route"]["cluster"] = ENGINE_CLUSTER
    vhost["routes"] = [route]
    resources["clusters"] = [engine_cluster(template, engine_url)]
    return cfg


def engine_cluster(template: dict[str, Any], engine_url: str) -> dict[str, Any]:
    """The router's HTTP cluster, reaching the engine instead (plaintext, as the engine speaks),
    or, for an https:// URL, a stand-in for the router (its TLS and health check kept)."""
    url = urlsplit(engine_url)
    cluster = copy.deepcopy(template)
    if url.scheme != "https":
        cluster.pop("transport_socket", None)
        for check in cluster.get("health_checks", []):
            check["http_health_check"] = {"path": "/health"}
            check.pop("grpc_health_check", None)
    cluster.update(
        name=ENGINE_CLUSTER,
        type="STATIC",
        load_assignment={
            "cluster_name": ENGINE_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(url.hostname, url.port)}}]}],
        },
    )
    cluster.pop("dns_lookup_family", None)
    return cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_floor_envoy(
    root: Path, engine_url: str, door_url: str, name: str = "envoy-floor"
) -> tuple[subprocess.Popen, str]:
    """Starts the floor Envoy next to the stack; returns it and its OpenAI base URL: the front
    door's (`door_url`, the same host name, which Envoy's certificate names) on the floor's port.
    `name` names its config and log files (one per floor Envoy)."""
    port = free_port()
    cfg = floor_config(yaml.safe_load((root / "envoy.yaml").read_text()), port, free_port(), engine_url)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, width=120))
    log_path = root / "logs" / f"{name}.log"
    envoy = Path(sys.executable).parent / "envoy"
    with log_path.open("w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [str(envoy), "-c", str(path), "--use-dynamic-base-id", "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    host = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["address"]
    connect_to = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with socket.socket() as s:
            if s.connect_ex((connect_to, port)) == 0:
                door = urlsplit(door_url)
                return proc, door._replace(netloc=f"{door.hostname}:{port}").geturl()
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the floor Envoy did not listen; see {log_path}")
