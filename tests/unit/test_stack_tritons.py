"""`harness up --triton NAME=HOST:PORT[,metrics=URL][,header=K:V]...`: parsing, the pool flag
it becomes, and the refusals."""

from __future__ import annotations

import pytest

from services.pool.access import access_from_mapping
from services.pool.config import endpoint_flag_mapping, parse_endpoint_flag
from services.router.config import parse_args as router_args
from services.stack.layout import StackPorts, service_addresses
from services.stack.tritons import parse_triton_flag, parse_triton_flags


def test_a_triton_flag_becomes_a_pool_endpoint_with_its_headers():
    t = parse_triton_flag(
        "real=10.0.0.5:8001,metrics=http://10.0.0.5:8002/metrics,header=triton-grpc-protocol-x:tok,memory_gb=80"
    )
    assert (t.name, t.address, t.metrics_url) == ("real", "10.0.0.5:8001", "http://10.0.0.5:8002/metrics")
    flag = t.endpoint_flag()
    spec = parse_endpoint_flag(flag)
    assert (spec.name, spec.address, spec.metrics_url, spec.gpu_memory_bytes) == (
        "real", "10.0.0.5:8001", "http://10.0.0.5:8002/metrics", 80 << 30,
    )  # fmt: skip
    assert endpoint_flag_mapping(flag)["headers"] == {"triton-grpc-protocol-x": "tok"}
    assert parse_triton_flag("t=localhost:8001").endpoint_flag() == "name=t,address=localhost:8001"


def test_headers_and_tls_go_to_the_pool_and_to_the_routers(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("roots")
    t = parse_triton_flag(f"real=10.0.0.5:8001,header=triton-grpc-protocol-x:tok,tls=true,ca={ca}")
    pool_side = access_from_mapping(endpoint_flag_mapping(t.endpoint_flag()))
    assert pool_side.headers == (("triton-grpc-protocol-x", "tok"),) and pool_side.tls
    assert pool_side.ca_file == str(ca)
    routers = dict(router_args(["--engine-access", t.router_flag()]).engine_access)["10.0.0.5:8001"]
    assert routers.headers == (("triton-grpc-protocol-x", "tok"),) and routers.tls
    assert routers.ca_file == str(ca)
    assert parse_triton_flag("plain=10.0.0.6:8001").router_flag() == ""  # nothing to send


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("real", "expected NAME=HOST:PORT"),
        ("real=host", "expected NAME=HOST:PORT"),
        ("bad name=h:1", "expected NAME=HOST:PORT"),
        ("r=h:1,metrics=ftp://x", "must be an http"),
        ("r=h:1,header=nocolon", "is not K:V"),
        ("r=h:1,colour=red", "unknown option 'colour'"),
        ("r=h:1,memory_gb=lots", "must be a number"),
        ("r=h:1,ca=/nonexistent.pem", "not a readable file"),
    ],
)
def test_bad_triton_flags_say_what_is_wrong(text, words):
    with pytest.raises(ValueError, match=words):
        parse_triton_flag(text)


def test_names_are_unique():
    with pytest.raises(ValueError, match="unique"):
        parse_triton_flags(["a=h:1", "a=h:2"])


def test_env_names_every_service():
    env = service_addresses(StackPorts())
    assert env["HARNESS_POOL_ADDR"] == "127.0.0.1:50081"
    assert env["HARNESS_ROUTER_ADDRS"] == "127.0.0.1:50061,127.0.0.1:50062"
    assert {"HARNESS_AUDIT_ADDR", "HARNESS_COST_ADDR"} <= set(env)
