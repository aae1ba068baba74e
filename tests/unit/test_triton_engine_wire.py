"""The Triton engine's request and response handling packs and reads tensors by hand; these
check it against what numpy and tritonclient's own helpers produce."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import serialize_byte_tensor

from services.router.triton import TritonRequest, build_request, parse_response


def _numpy_inputs(req: TritonRequest) -> dict[str, bytes]:
    """Each input's raw contents as numpy and serialize_byte_tensor make them."""
    out = {
        "text_input": serialize_byte_tensor(np.array([[req.prompt.encode()]], dtype=object)).item(),
        "max_tokens": np.array([[req.max_tokens]], dtype=np.int32).tobytes(),
        "stream": np.array([[req.stream]], dtype=bool).tobytes(),
        "exclude_input_in_output": np.array([[True]], dtype=bool).tobytes(),
        "return_num_input_tokens": np.array([[True]], dtype=bool).tobytes(),
        "return_num_output_tokens": np.array([[True]], dtype=bool).tobytes(),
    }
    if req.temperature > 0:
        out["temperature"] = np.array([[req.temperature]], dtype=np.float32).tobytes()
    if req.top_p > 0:
        out["top_p"] = np.array([[req.top_p]], dtype=np.float32).tobytes()
    if req.top_k > 0:
        out["top_k"] = np.array([[req.top_k]], dtype=np.int32).tobytes()
    if req.seed is not None:
        out["seed"] = np.array([[req.seed]], dtype=np.uint64).tobytes()
    return out


@pytest.mark.parametrize(
    "req",
    [
        TritonRequest(model="m", prompt="hello", max_tokens=8, request_id="r1"),
        TritonRequest(
            model="m",
            prompt="héllo wörld ✓" * 40,
            max_tokens=4096,
            temperature=0.7,
            top_p=0.95,
            top_k=40,
            seed=2**64 - 1,
            stream=False,
            request_id="r2",
        ),
        TritonRequest(model="m", prompt="", max_tokens=0, temperature=2.0, top_p=1.0, seed=0),
    ],
)
def test_inputs_are_packed_as_numpy_packs_them(req: TritonRequest):
    msg = build_request(req)
    got = {t.name: raw for t, raw in zip(msg.inputs, msg.raw_input_contents, strict=True)}
    assert got == _numpy_inputs(req)
    assert all(list(t.shape) == [1, 1] for t in msg.inputs)


def _response(outputs: list[tuple[str, bytes | None]], final: bool | None) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse()
    for name, raw in outputs:
        resp.outputs.add(name=name)
        if raw is not None:
            resp.raw_output_contents.append(raw)
    if final is not None:
        resp.parameters["triton_final_response"].bool_param = final
    return resp


def test_a_response_is_read_whatever_the_order_of_its_outputs():
    text = serialize_byte_tensor(np.array([["héllo".encode()]], dtype=object)).item()
    resp = _response(
        [("num_output_tokens", np.array([3], np.int32).tobytes()), ("text_output", text),
         ("num_input_tokens", np.array([[5, 7]], np.int32).tobytes())],
        final=True,
    )  # fmt: skip
    chunk = parse_response(resp)
    assert (chunk.text, chunk.final, chunk.input_tokens, chunk.output_tokens) == ("héllo", True, 12, 3)


def test_missing_or_empty_outputs_read_as_unknown():
    chunk = parse_response(_response([("text_output", b""), ("num_input_tokens", None)], final=None))
    assert (chunk.text, chunk.final, chunk.input_tokens, chunk.output_tokens) == ("", False, None, None)
