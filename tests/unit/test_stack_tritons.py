"""`harness up --triton NAME=HOST:PORT[,metrics=URL][,header=K:V]...`: parsing, the pool flag
it becomes, and the refusals."""

from __future__ import annotations

import pytest

from services.pool.config import endpoint_flag_mapping, parse_endpoint_flag
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
