"""An agent version's default stop strings follow the router's rule for a request's: stored
defaults the router would refuse on a call are refused when written, naming the entry."""

from __future__ import annotations

import pytest
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb

from services.common.errors import InvalidArgument
from services.registry.convert import version_in


def _version(*stop: str) -> pb.AgentVersion:
    return pb.AgentVersion(version="v2", models=["m"], default_sampling=common_pb2.SamplingParams(stop=stop))


@pytest.mark.parametrize(
    ("stop", "why"),
    [
        (("</s>", ""), r"^default_sampling\.stop\[1\] is empty: a stop string needs at least one character"),
        (("a\x00b",), r"^default_sampling\.stop\[0\] holds a NUL character"),
        (("x" * 257,), r"^default_sampling\.stop\[0\] is 257 characters; the limit is 256"),
        (("s",) * 17, r"^default_sampling\.stop has 17 entries; the limit is 16"),
    ],
)
def test_a_stop_string_the_router_would_refuse_is_refused_naming_it(stop, why):
    with pytest.raises(InvalidArgument, match=why):
        version_in(_version(*stop))


def test_stop_strings_the_router_takes_are_stored():
    stored = version_in(_version("</s>", "x" * 256, "\n"))
    assert stored.default_sampling["stop"] == ["</s>", "x" * 256, "\n"]
