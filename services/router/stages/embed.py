"""The stages an embedding call has of its own: ValidateInputs (count, sizes, the model's kind,
context and vector length), RedactInputs (the agent's data policy on every input, before the
engine, the log and the ledger see it) and EmbedDispatch (the source: one batch to one engine,
one failover). Identity, policy, rate limits, budgets (input tokens only), the journal, audit
and usage are the generation path's own stages (core.Router.embed_stages)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.limits import holds_nul
from services.router.call import Call, Chunk, EmbeddingInput
from services.router.dispatch import Dispatcher
from services.router.engine import CHARS_PER_TOKEN, estimate_tokens
from services.router.pipeline import Stage
from services.router.privacy import AgentRedactors
from services.router.stages.admit import MAX_PROMPT_CHARS
from services.router.views import EndpointView

MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_DIMENSIONS = 65_536


def require_embedding_model(call: Call) -> None:
    if call.catalog.kind != registry_pb2.MODEL_KIND_EMBEDDING:
        raise InvalidArgument(
            f"model {call.model!r} is a generation model, not an embedding model; "
            "embed with a model of kind embedding (`harness models list`)"
        )


def check_input_context(call: Call, texts: tuple[str, ...]) -> None:
    """Each input must fit the model's context (an embedding model reads each one alone)."""
    context = call.catalog.context_length
    if not context:
        return
    for i, text in enumerate(texts):
        tokens = estimate_tokens(text)
        if tokens > context:
            raise InvalidArgument(
                f"input[{i}] is ~{tokens} tokens ({CHARS_PER_TOKEN} characters per token); model "
                f"{call.model!r} reads at most {context} tokens per input: split it into smaller chunks"
            )


class ValidateInputs(Stage):
    """Count, sizes, the model's kind, each input's length against the context, `dimensions`."""

    name = "validate-inputs"

    async def enter(self, call: Call) -> None:
        inp = call.inp
        assert isinstance(inp, EmbeddingInput)
        require_embedding_model(call)
        if not 1 <= len(inp.inputs) <= MAX_INPUTS:
            raise InvalidArgument(f"send 1 to {MAX_INPUTS} inputs, not {len(inp.inputs)}")
        total = sum(len(text) for text in inp.inputs)
        if total > MAX_PROMPT_CHARS:
            raise InvalidArgument(
                f"the inputs are {total} characters in all; the limit is {MAX_PROMPT_CHARS}"
            )
        for i, text in enumerate(inp.inputs):
            if not text.strip():
                raise InvalidArgument(f"input[{i}] is empty; every input must have text to embed")
            if "\x00" in text:  # as gRPC callers are refused it in every string (the interceptor)
                raise holds_nul(f"input[{i}]")
        check_dimensions(call, inp.dimensions)
        check_input_context(call, inp.inputs)
        call.texts = inp.inputs
        call.prompt_tokens, call.max_tokens = sum(estimate_tokens(t) for t in inp.inputs), 0


def check_dimensions(call: Call, wanted: int) -> None:
    if not wanted:
        return
    native = call.catalog.dimensions
    if not 0 < wanted <= MAX_DIMENSIONS:
        raise InvalidArgument(f"dimensions must be 1 to {MAX_DIMENSIONS}, not {wanted}")
    if wanted != native:
        have = f"{native}-dimensional vectors" if native else "vectors of a length the catalog does not state"
        raise InvalidArgument(
            f"model {call.model!r} produces {have} and cannot shorten them; "
            f"leave out dimensions{f' or send {native}' if native else ''}"
        )


class RedactInputs(Stage):
    """Masks, hashes or drops PII in every input per the agent's data policy (kinds and counts
    are recorded, never values)."""

    name = "redact-inputs"

    def __init__(self, redactors: AgentRedactors) -> None:
        self.redactors = redactors

    async def enter(self, call: Call) -> None:
        redacted = []
        for text in call.texts:
            clean, _ = await self.redactors.prompt(call.agent, text, call.redactions)
            redacted.append(clean)
        call.texts = tuple(redacted)
        call.prompt_tokens = sum(estimate_tokens(t) for t in call.texts)
        check_input_context(call, call.texts)  # hash mode lengthens values


class EmbedDispatch(Stage):
    """The source of an embedding call: the batch to one engine (dispatcher.embed), its vectors
    and token counts onto the call, and one final empty chunk."""

    name = "embed-dispatch"

    def __init__(self, dispatcher: Dispatcher, endpoints: EndpointView) -> None:
        self.dispatcher = dispatcher
        self.endpoints = endpoints

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        call.dispatched = True
        try:
            result = await self.dispatcher.embed(call)
        finally:
            call.gpu_type = self.endpoints.gpu_type(call.endpoint.name) if call.endpoint else ""
        call.reached_backend = True
        call.input_tokens, call.usage_estimated = result.input_tokens, result.estimated
        call.text_tokens = result.per_text
        vectors = result.vectors
        native = call.catalog.dimensions
        if native and vectors.shape[1] != native:
            raise FailedPrecondition(
                f"model {call.model!r} on {call.endpoint.name} answered {vectors.shape[1]}-dimensional "
                f"vectors; the catalog says {native}: correct the catalog's dimensions"
            )
        call.vectors = vectors
        call.finish_reason = common_pb2.FINISH_REASON_STOP
        yield Chunk("", True)
