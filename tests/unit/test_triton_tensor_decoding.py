"""BYTES inputs are read for the elements their shape declares and no more: a request cannot
make the front door parse a million strings (half a second of the event loop) to refuse it."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from services.common import embedding_tensors
from services.common.bytes_tensor import MAX_BYTES_ELEMENTS, bytes_elements
from services.common.triton_tensors import TensorError, decode_inputs
from services.router.triton_facade import FacadeEmbeddingModel, FacadeModel


def _element(text: bytes) -> bytes:
    return struct.pack("<I", len(text)) + text


def _request(text_raw: bytes, text_shape=(1, 1), extra=()) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    tensors = [("text_input", "BYTES", text_shape, text_raw),
               ("max_tokens", "INT32", (1, 1), np.array([[3]], np.int32).tobytes()), *extra]  # fmt: skip
    for name, datatype, shape, raw in tensors:
        req.inputs.add(name=name, datatype=datatype, shape=list(shape))
        req.raw_input_contents.append(raw)
    return req


def test_elements_are_read_as_declared():
    assert bytes_elements(_element(b"ab") + _element(b""), 2) == [b"ab", b""]
    values = decode_inputs(_request(_element("héllo".encode())), FacadeModel("m"))
    assert values["text_input"].shape == (1, 1) and values["text_input"][0, 0] == "héllo".encode()


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (_element(b"x") + _element(b"") * 1_000_000, "4000000 bytes follow the 1 elements declared"),
        (struct.pack("<I", 1000) + b"ab", "element 0 declares 1000 bytes and 2 follow"),
        (b"\x01\x00", "they end after 0 of the 1 elements declared"),
    ],
    ids=["a million more than declared", "a length past the end", "a cut length prefix"],
)
def test_contents_that_do_not_match_the_shape_are_refused_saying_where(raw, says):
    with pytest.raises(TensorError, match="malformed BYTES tensor contents") as refused:
        decode_inputs(_request(raw), FacadeModel("m"))
    assert says in str(refused.value)


def test_a_declared_count_past_the_limit_or_below_zero_is_refused_before_reading():
    stop = ("stop_words", "BYTES", (1, MAX_BYTES_ELEMENTS + 1), b"")
    with pytest.raises(TensorError, match=f"declares {MAX_BYTES_ELEMENTS + 1} string elements; at most"):
        decode_inputs(_request(_element(b"hi"), extra=[stop]), FacadeModel("m"))
    negative = ("stop_words", "BYTES", (1, -3), _element(b"x"))
    with pytest.raises(TensorError, match=r"unexpected shape for input 'stop_words'.*got \[1,-3\]"):
        decode_inputs(_request(_element(b"hi"), extra=[negative]), FacadeModel("m"))


def test_an_embedding_batch_is_read_for_its_declared_size_only():
    req = embedding_tensors.build_request("e", ("a", "b"))
    req.raw_input_contents[0] += _element(b"") * 1_000_000
    with pytest.raises(embedding_tensors.EmbeddingTensorError, match="bytes follow the 2 elements declared"):
        embedding_tensors.decode_texts(req, FacadeEmbeddingModel("e", 4))
