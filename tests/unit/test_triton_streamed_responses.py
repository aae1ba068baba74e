"""The front door's per-request response shell builds exactly what build_response does."""

from __future__ import annotations

import itertools

import pytest
from tritonclient.grpc import service_pb2 as pb

from services.common import triton_tensors as tensors
from services.router.triton_facade import VALUE_TYPES, FacadeModel

NAMES = tuple(VALUE_TYPES)


@pytest.mark.parametrize(
    "outputs", [set(c) for n in range(len(NAMES) + 1) for c in itertools.combinations(NAMES, n)]
)
@pytest.mark.parametrize("final", [None, False, True])
def test_each_response_equals_build_response_wrapped(outputs: set[str], final: bool | None):
    spec = FacadeModel("llama-3-8b-instruct")
    shaped = tensors.StreamedResponses(spec, "req-7", {k: VALUE_TYPES[k] for k in outputs})
    for text, counts in (("héllo", (12, 1)), ("", (12, 0)), (" wörld" * 50, (9000, 70000))):
        values = {"text_output": text, "num_input_tokens": counts[0], "num_output_tokens": counts[1]}
        expected = pb.ModelStreamInferResponse(
            infer_response=tensors.build_response(spec, "req-7", {k: values[k] for k in outputs}, final=final)
        )
        got = shaped.response(values, final)
        assert got == expected
        assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_responses_do_not_share_contents():
    shaped = tensors.StreamedResponses(FacadeModel("m"), "r", {"text_output": str})
    first = shaped.response({"text_output": "a"}, False)
    second = shaped.response({"text_output": "b"}, True)
    assert list(first.infer_response.raw_output_contents) == [b"\x01\x00\x00\x00a"]
    assert list(second.infer_response.raw_output_contents) == [b"\x01\x00\x00\x00b"]
    assert not first.infer_response.parameters["triton_final_response"].bool_param
