"""A second Envoy configuration: the ext_proc endpoint-picker data path for Triton streams.

Derived from the front door's own bootstrap (same mTLS listener, same router cluster), with
Envoy's external processing filter asking a router for each `ModelStreamInfer` request and an
ORIGINAL_DST cluster that connects to the endpoint the router names. Envoy then carries the
tokens engine -> client itself; every other path still goes to the routers as before.
"""

from __future__ import annotations

import copy
from typing import Any

from services.envoy.parts import HTTP_OPTS_KEY, TYPE_PREFIX, addr, protocol_options
from services.envoy.stats import ADMIN_CLUSTER

EXTPROC_FILTER = "envoy.filters.http.ext_proc"
STREAM_INFER_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"
DESTINATION_HEADER = "x-gateway-destination-endpoint"  # the Gateway API Inference Extension's name
ENGINES_CLUSTER = "engines_picked"
_EXT_PROC = TYPE_PREFIX + "extensions.filters.http.ext_proc.v3.ExternalProcessor"
_EXT_PROC_PER_ROUTE = TYPE_PREFIX + "extensions.filters.http.ext_proc.v3.ExtProcPerRoute"


def extproc_filter(picker_cluster: str, count_tokens: bool, timeout_s: float) -> dict[str, Any]:
    """Request headers and body to the picker (full duplex: the body is not held back); the
    response body only when the router counts tokens itself; the trailers to settle."""
    return {
        "name": EXTPROC_FILTER,
        "typed_config": {
            "@type": _EXT_PROC,
            "grpc_service": {"envoy_grpc": {"cluster_name": picker_cluster}, "timeout": f"{timeout_s:g}s"},
            "failure_mode_allow": False,  # no pick, no call: never an unchecked request upstream
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "FULL_DUPLEX_STREAMED",
                "request_trailer_mode": "SEND",
                "response_header_mode": "SKIP",
                "response_body_mode": "STREAMED" if count_tokens else "NONE",
                "response_trailer_mode": "SEND",
            },
            # A call may wait its turn in flow control before the router picks an endpoint.
            "message_timeout": f"{timeout_s:g}s",
        },
    }


def engines_cluster() -> dict[str, Any]:
    """Connects to whatever address the picker put in the destination header (plaintext h2,
    as the local stack's engines speak)."""
    return {
        "name": ENGINES_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
        "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_HEADER},
        "typed_extension_protocol_options": {HTTP_OPTS_KEY: protocol_options(http1=False)},
    }


def with_extproc(
    config: dict[str, Any],
    listen_port: int,
    admin_port: int,
    count_tokens: bool = True,
    picker_cluster: str = "router",
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """The front door's bootstrap turned into the ext_proc data path (a new dict)."""
    cfg = copy.deepcopy(config)
    cfg["admin"]["address"] = addr("127.0.0.1", admin_port)
    resources = cfg["static_resources"]
    listener = resources["listeners"][0]
    host = listener["address"]["socket_address"]["address"]
    listener.update(name="harness_extproc", address=addr(host, listen_port))
    resources["listeners"] = [listener]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "harness_extproc"
    filters = hcm["http_filters"]
    filters.insert(len(filters) - 1, extproc_filter(picker_cluster, count_tokens, timeout_s))
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    off = {EXTPROC_FILTER: {"@type": _EXT_PROC_PER_ROUTE, "disabled": True}}
    for route in routes:
        route.setdefault("typed_per_filter_config", {}).update(off)
    picked = {
        "match": {"path": STREAM_INFER_PATH, "grpc": {}},
        "route": {"cluster": ENGINES_CLUSTER, "timeout": "0s"},
    }
    routes.insert(0, picked)
    resources["clusters"] = [c for c in resources["clusters"] if c["name"] != ADMIN_CLUSTER] + [
        engines_cluster()
    ]
    return cfg


def main(argv: list[str] | None = None) -> int:
    import argparse
    from pathlib import Path

    import yaml

    p = argparse.ArgumentParser(
        prog="python -m services.envoy.extproc",
        description="Derive the ext_proc endpoint-picker Envoy config from the front door's envoy.yaml",
    )
    p.add_argument("--from", dest="source", type=Path, default=Path(".harness/envoy.yaml"))
    p.add_argument("--port", type=int, required=True, help="the listener's port (mTLS, as the front door's)")
    p.add_argument("--admin-port", type=int, required=True, help="Envoy's admin port (127.0.0.1)")
    p.add_argument(
        "--no-response-body",
        action="store_true",
        help="do not stream responses through the router: no per-chunk cost, usage estimated at "
        "max_tokens, and agents with an output redaction policy refused",
    )
    p.add_argument("--out", type=Path, help="write here instead of stdout")
    args = p.parse_args(argv)
    cfg = with_extproc(
        yaml.safe_load(args.source.read_text()),
        args.port,
        args.admin_port,
        count_tokens=not args.no_response_body,
    )
    text = yaml.safe_dump(cfg, sort_keys=False, width=120)
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
