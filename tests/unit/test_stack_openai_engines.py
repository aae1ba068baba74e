"""`harness up --openai-engine NAME=URL[,flavour=vllm][,header=K:V][,metrics=URL]`: parsing, the
pool flag and the routers' --engine-access it becomes, and the refusals."""

from __future__ import annotations

import pytest

from services.pool.config import endpoint_flag_mapping, parse_endpoint_flag
from services.router.config import parse_args as router_args
from services.stack.openai_engines import parse_openai_engine_flag, parse_openai_engine_flags


def test_an_openai_engine_becomes_a_fixed_pool_endpoint_and_router_access():
    o = parse_openai_engine_flag("mine=http://10.0.0.7:8000/v1,header=Authorization:Bearer k")
    assert (o.name, o.url, o.flavour, o.metrics_url) == (
        "mine", "http://10.0.0.7:8000", "vllm", "http://10.0.0.7:8000/metrics",
    )  # fmt: skip
    spec = parse_endpoint_flag(o.endpoint_flag())
    assert (spec.kind, spec.flavour, spec.address, spec.fixed) == (
        "openai",
        "vllm",
        "http://10.0.0.7:8000",
        True,
    )
    assert endpoint_flag_mapping(o.endpoint_flag())["headers"] == {"authorization": "Bearer k"}
    cfg = router_args(["--engine-access", o.router_flag()])
    assert dict(cfg.engine_access)["http://10.0.0.7:8000"].headers == (("authorization", "Bearer k"),)
    ollama = parse_openai_engine_flag("o=http://localhost:11434,flavour=ollama")
    assert ollama.metrics_url == "" and ollama.router_flag() == ""  # Ollama has no /metrics


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("mine", "expected NAME=URL"),
        ("mine=10.0.0.7:8000", "expected NAME=URL"),
        ("m=http://h:1,flavour=llamacpp", "flavour must be one of"),
        ("m=http://h:1,header=nocolon", "is not K:V"),
        ("m=http://h:1,metrics=ftp://x", "must be an http"),
        ("m=http://h:1,colour=red", "unknown option 'colour'"),
    ],
)
def test_bad_openai_engine_flags_say_what_is_wrong(text, words):
    with pytest.raises(ValueError, match=words):
        parse_openai_engine_flag(text)


def test_names_are_unique():
    with pytest.raises(ValueError, match="unique"):
        parse_openai_engine_flags(["a=http://h:1", "a=http://h:2"])
