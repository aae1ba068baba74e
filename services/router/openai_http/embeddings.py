"""`POST /v1/embeddings` in OpenAI's shape: the request body into the router's EmbeddingInput,
the finished call into OpenAI's response (vectors as JSON floats or, with
`encoding_format: "base64"`, as base64 of little-endian float32, which is what the openai SDK
asks for by default and decodes itself).

`input` is a string or a list of 1 to 2048 strings. Token arrays (lists of integers, which
langchain-openai's OpenAIEmbeddings sends unless `check_embedding_ctx_length=False`) are refused
with a 400 that says so: they are ids of OpenAI's tokenizer, which the models behind the Harness
do not share, so the text cannot be recovered from them. `dimensions` is accepted only as the
model's own vector length (no model here shortens its vectors).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, StrictStr

from services.router.call import Call, EmbeddingInput
from services.router.openai_http import wire
from services.router.openai_http.schema import MAX_ID_CHARS, BadRequest, Short, _Body, invalid_type
from services.router.stages.embed import MAX_DIMENSIONS, MAX_INPUTS

TOKEN_ARRAYS_REFUSED = (
    "'input' holds token ids; this server embeds text (its models do not use OpenAI's tokenizer): "
    "send strings. With langchain-openai, create OpenAIEmbeddings(..., check_embedding_ctx_length=False)"
)


class EmbeddingRequest(_Body):
    model: Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)]
    input: StrictStr | list[Any]  # its length is checked below, for a clearer message (the body is bounded)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=MAX_DIMENSIONS)] | None = None
    user: Short | None = None


def embedding_input(req: EmbeddingRequest) -> EmbeddingInput:
    texts = (req.input,) if isinstance(req.input, str) else tuple(req.input)
    if not 1 <= len(texts) <= MAX_INPUTS:
        what = "an empty list" if not texts else f"a list of {len(texts)} items"
        raise BadRequest(
            f"'input' is {what}: send 1 to {MAX_INPUTS} strings, at most {MAX_INPUTS} per request", "input"
        )
    for i, text in enumerate(texts):
        if isinstance(text, int | list) and not isinstance(text, bool):
            raise BadRequest(TOKEN_ARRAYS_REFUSED, "input", "unsupported_parameter")
        if not isinstance(text, str):
            raise invalid_type(f"input[{i}]", "a string", text)
        if not text:
            raise BadRequest(f"'input[{i}]' is empty: every input must have text to embed", f"input[{i}]")
    return EmbeddingInput(inputs=texts, model=req.model, dimensions=req.dimensions or 0)


def _encoded(row: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    return row.tolist()


def response_body(call: Call, encoding: str) -> str:
    assert call.vectors is not None
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(row, encoding)}
        for i, row in enumerate(call.vectors)
    ]
    usage = {"prompt_tokens": call.input_tokens, "total_tokens": call.input_tokens}
    return wire.dumps({"object": "list", "data": data, "model": call.model, "usage": usage})
