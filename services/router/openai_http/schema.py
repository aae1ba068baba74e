"""Request bodies of the OpenAI API as pydantic models, and their conversion into the router's
GenerationInput (the same call the gRPC Generate servicer makes).

Fields OpenAI defines that this server cannot honour are accepted only at their neutral value
(n=1, no logprobs, no penalties...) and refused otherwise, naming the field; fields OpenAI does
not define are refused as OpenAI refuses them. Every size is bounded. JSON types are checked
strictly (pydantic's strict mode), as OpenAI checks them: "0.5" or true for a number, 5.0 for an
integer, 0 for a boolean are refused with `invalid_type`, never coerced; an integer is a number.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from pydantic_core import PydanticCustomError

from services.common.errors import InvalidArgument
from services.common.openai_tool_calls import (
    FUNCTION_NAME,
    MAX_DESCRIPTION_CHARS,
    MAX_TOOLS,
    parameters_error,
)
from services.router.chat import AUTO, NONE, ChatMessage, ToolCallOut, ToolChoice, ToolSpec
from services.router.core import GenerationInput

# The router's own limits on messages and output tokens, held here too so that a request past
# them is refused naming its field as OpenAI names it (not later, by the gRPC name).
from services.router.stages.admit import MAX_MESSAGES, MAX_OUTPUT_TOKENS

MAX_PARTS = 256
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_ID_CHARS = 256
MAX_TOOL_CALLS = 128
MAX_METADATA_PAIRS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 16, 64, 512  # OpenAI's
UINT64 = 2**64  # the engine's seed tensor is UINT64

Short = Annotated[StrictStr, Field(max_length=MAX_ID_CHARS)]
MetadataKey = Annotated[StrictStr, Field(max_length=MAX_METADATA_KEY_CHARS)]
MetadataValue = Annotated[StrictStr, Field(max_length=MAX_METADATA_VALUE_CHARS)]
OutputTokens = Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)]
ServiceTier = Literal["auto", "default", "flex", "scale", "priority"]  # OpenAI's, taken and ignored


class BadRequest(InvalidArgument):
    """An invalid request that names the offending field (OpenAI's `param`)."""

    http_status = 400

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.error_code = code


class _Body(BaseModel):
    # strict: a JSON value of the wrong type is refused, not coerced (pydantic's lax mode would
    # read "0.5" and true as numbers, 5.0 as 5, 0 as false). allow_inf_nan: NaN is not JSON.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _only(neutral: bool | int) -> AfterValidator:
    """Accepts a field (already of its own type: strict) at `neutral` only, the value this
    server honours. Not a Literal: Literal[1] compares by ==, so it takes true and 1.0 too."""
    expected = json.dumps(neutral)

    def check(value: Any) -> Any:
        if value != neutral:
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return value

    return AfterValidator(check)


OnlyOne = Annotated[int, _only(1)]
OnlyZero = Annotated[int, _only(0)]
OnlyFalse = Annotated[bool, _only(False)]
NoPenalty = Annotated[float, _only(0)]  # a number: 0 and 0.0 are both taken


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


FunctionName = Annotated[StrictStr, Field(pattern=FUNCTION_NAME)]


class CalledFunction(_Body):
    name: FunctionName
    arguments: StrictStr  # JSON text, as the model wrote it


class MessageToolCall(_Body):
    id: Short
    type: Literal["function"]
    function: CalledFunction


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | Annotated[list[TextPart], Field(max_length=MAX_PARTS)] | None = None
    name: Short | None = None
    tool_call_id: Short | None = None
    tool_calls: Annotated[list[MessageToolCall], Field(max_length=MAX_TOOL_CALLS)] | None = None
    refusal: StrictStr | None = None
    # What an answer's message carries when a client sends it back as history (ignored).
    annotations: Annotated[list[dict[str, Any]], Field(max_length=MAX_PARTS)] | None = None
    function_call: None = None


class FunctionDefinition(_Body):
    name: FunctionName
    description: Annotated[StrictStr, Field(max_length=MAX_DESCRIPTION_CHARS)] | None = None
    # A JSON Schema object, shown to the model as is; its type and bounds are checked in _tools.
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class FunctionTool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Body):
    name: FunctionName


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Body):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None


class ResponseFormat(_Body):
    type: Literal["text"]


class Sampling(_Body):
    """What chat and text completions share."""

    model: Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)]
    max_tokens: OutputTokens | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: Annotated[int, Field(ge=0, lt=UINT64)] | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=MAX_STOP)] | None = None
    n: OnlyOne | None = None
    stream: StrictBool | None = False  # null is OpenAI's default too
    stream_options: StreamOptions | None = None
    user: Short | None = None
    presence_penalty: NoPenalty | None = None
    frequency_penalty: NoPenalty | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None
    logprobs: OnlyFalse | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS)] | None = None
    store: StrictBool | None = None
    service_tier: ServiceTier | None = None


class ChatCompletionRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: OutputTokens | None = None
    top_logprobs: OnlyZero | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None


class CompletionRequest(Sampling):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=1)]
    echo: OnlyFalse | None = None
    best_of: OnlyOne | None = None
    suffix: None = None


def parse(model: type[BaseModel], body: bytes) -> Any:
    """The validated request, or BadRequest naming the first offending field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _bad_request(exc) from None


def _bad_request(exc: ValidationError) -> BadRequest:
    # The deepest location is the most telling: for a content part of the wrong type, its
    # `type`, not "content should be a string" from the other branch of the union; at the same
    # depth, a broken bound (too many parts) rather than the other branch's type.
    errors = exc.errors(include_url=False)
    err = max(errors, key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")))
    kind = err["type"]
    if kind == "json_invalid":
        return BadRequest(
            f"the request body is not valid JSON: {err['msg']}{_hint(err['msg'])}", None, "invalid_json"
        )
    if kind == "model_type" and not err["loc"]:
        return BadRequest("the request body must be a JSON object", None, "invalid_json")
    param = _param(err["loc"])
    if kind == "extra_forbidden":
        return BadRequest(f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if kind == "missing":
        return BadRequest(f"Missing required parameter: '{param}'", param, "missing_required_parameter")
    if kind in _EXPECTED:  # every branch of a union refused the value's type: name them all
        expected = dict.fromkeys(
            _EXPECTED[e["type"]] for e in errors if e["type"] in _EXPECTED and _param(e["loc"]) == param
        )
        return invalid_type(param, " or ".join(expected), err.get("input"))
    value = _cut(_json(err.get("input")), 80)
    if err["loc"][-1:] == ("[key]",):  # a key of a dict (metadata): name the dict, not the key
        param = _param(err["loc"][:-2])
        return BadRequest(f"Invalid key in '{param}': {err['msg']} (got {value})", param)
    return BadRequest(f"Invalid value for '{param}': {err['msg']} (got {value})", param)


def _hint(parse_error: str) -> str:
    """What the parser's words mean where they do not say it: a \\uD800-\\uDFFF escape not
    paired (a lone surrogate) is "unexpected end of hex escape" when nothing follows it."""
    if "hex escape" in parse_error or "surrogate" in parse_error:
        return (
            " (a \\uD800-\\uDFFF escape is half of a surrogate pair, high then low as in \\ud83d\\ude00: "
            "a lone surrogate is not a character; send the text as UTF-8)"
        )
    return ""


# What a field wanted, by pydantic's error type, in JSON's words (as OpenAI's messages put it).
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def invalid_type(param: str, expected: str, value: Any) -> BadRequest:
    """OpenAI's refusal of a value of the wrong JSON type, e.g. "Invalid type for 'temperature':
    expected a number, but got a string instead." (code invalid_type)."""
    message = f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead."
    return BadRequest(message, param, "invalid_type")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return "a boolean"
    kinds = ((int, "an integer"), (float, "a decimal number"), (str, "a string"), (list, "an array"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "an object")


def _json(value: Any) -> str:
    """The value as the client wrote it (JSON: true, not True)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _param(loc: tuple[Any, ...]) -> str:
    """`messages[0].content` from pydantic's location, leaving out union branch names."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in (
            "str",
            "list[TextPart]",
            "list[str]",
            "dict[str,any]",
            "int",
            "float",
            "NamedToolChoice",
        ):
            continue
        elif "[" in str(part) or "'" in str(part):  # a union/literal branch label
            continue
        else:  # a field, or a key of a dict the caller sent (cut: it is theirs, of any length)
            part = _cut(str(part), MAX_METADATA_KEY_CHARS)
            out += f".{part}" if out else part
    return out


def _text(content: str | list[TextPart] | None, param: str) -> str:
    if content is None:
        raise BadRequest(f"'{param}' is required: send the message text", param)
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    for i, s in enumerate(stops):
        if not s or len(s) > MAX_STOP_CHARS:
            raise BadRequest(f"each stop sequence must be 1 to {MAX_STOP_CHARS} characters", f"stop[{i}]")
    return stops


def _sampling(req: Sampling, max_tokens: int | None) -> dict[str, Any]:
    if req.stream_options is not None and not req.stream:
        # OpenAI's own refusal, word for word.
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        raise BadRequest(message, "stream_options")
    return {
        "max_tokens": max_tokens or 0,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": req.top_p or 0.0,
        "seed": req.seed,
        "stop": _stop(req.stop),
        "model": req.model,
    }


def _message(m: Message, i: int) -> ChatMessage:
    role = "system" if m.role == "developer" else m.role
    if m.tool_calls:
        if role != "assistant":
            raise BadRequest("only assistant messages carry tool_calls", f"messages[{i}].tool_calls")
        calls = []
        for j, c in enumerate(m.tool_calls):
            try:
                args = json.loads(c.function.arguments or "{}")
            except ValueError:
                args = None
            if not isinstance(args, dict):
                param = f"messages[{i}].tool_calls[{j}].function.arguments"
                raise BadRequest("a tool call's arguments must be a JSON object, as text", param)
            calls.append(ToolCallOut(c.function.name, c.function.arguments, c.id))
        content = _text(m.content, "") if m.content is not None else ""
        return ChatMessage(role, content, tool_calls=tuple(calls))
    if role == "tool" and not m.tool_call_id:
        raise BadRequest("a tool message needs the tool_call_id it answers", f"messages[{i}].tool_call_id")
    content = _text(m.content, f"messages[{i}].content")
    return ChatMessage(role, content, tool_call_id=m.tool_call_id or "", name=m.name or "")


def _tools(req: ChatCompletionRequest) -> tuple[tuple[ToolSpec, ...], ToolChoice]:
    for i, tool in enumerate(req.tools or ()):
        if tool.function.parameters and (problem := parameters_error(tool.function.parameters)):
            param = f"tools[{i}].function.parameters"
            raise BadRequest(f"Invalid value for '{param}': {problem}", param)
    tools = tuple(
        ToolSpec(t.function.name, t.function.description or "", t.function.parameters or {})
        for t in req.tools or ()
    )
    if len({t.name for t in tools}) != len(tools):
        raise BadRequest("each tool needs a distinct function name", "tools")
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in {t.name for t in tools}:
            raise BadRequest(
                f"tool_choice names {choice.function.name!r}, which is not among the tools", "tool_choice"
            )
        return tools, ToolChoice(AUTO, choice.function.name)
    if choice not in (None, NONE) and not tools:
        raise BadRequest(f"tool_choice {choice!r} needs tools", "tool_choice")
    return tools, ToolChoice(choice or (AUTO if tools else NONE))


def chat_input(req: ChatCompletionRequest, min_chunk_interval_ms: int = 0) -> GenerationInput:
    messages = tuple(_message(m, i) for i, m in enumerate(req.messages))
    if req.max_tokens and req.max_completion_tokens and req.max_tokens != req.max_completion_tokens:
        raise BadRequest("set max_completion_tokens or max_tokens, not both", "max_tokens")
    tools, choice = _tools(req)
    return GenerationInput(
        messages=messages,
        tools=tools,
        tool_choice=choice,
        min_chunk_interval_ms=min_chunk_interval_ms,
        **_sampling(req, req.max_completion_tokens or req.max_tokens),
    )


def completion_input(req: CompletionRequest, min_chunk_interval_ms: int = 0) -> GenerationInput:
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    return GenerationInput(
        prompt=prompt, min_chunk_interval_ms=min_chunk_interval_ms, **_sampling(req, req.max_tokens)
    )
