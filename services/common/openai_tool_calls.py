"""OpenAI's tool calling as both OpenAI-compatible servers here speak it: the router's front door
and the engine simulator (as vLLM). One definition of the rule and bounds on the functions a
request offers, of a function definition's JSON, and of the JSON shapes of the calls an answer
makes:

- a tool definition: `{"type": "function", "function": {"name", "description", "parameters",
  "strict"}}` (`function_tool`), as the router prints it into a chat-template prompt and the
  simulator reads it back (`function_of`, from where `TOOL_JSON_START` begins one);
- `message.tool_calls[i]`: `{"id", "type": "function", "function": {"name", "arguments"}}`;
- streamed `delta.tool_calls[i]`: a call's first piece `{"index", "id", "type", "function":
  {"name", "arguments"}}`, then `{"index", "function": {"arguments": fragment}}` pieces that
  clients join by index.
"""

from __future__ import annotations

import json
from typing import Any

FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names
MAX_TOOLS = 128  # OpenAI's limit on the functions one request offers
MAX_DESCRIPTION_CHARS = 8192  # one function's description
MAX_SCHEMA_BYTES = 64 << 10  # one function's parameters, as JSON
MAX_SCHEMA_DEPTH = 32  # objects and arrays inside one another, in one function's parameters


def nested_deeper(obj: Any, levels: int) -> bool:
    """Whether `obj` nests objects or arrays more than `levels` deep (stops looking there)."""
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else None
    if children is None:
        return False
    return levels <= 0 or any(nested_deeper(c, levels - 1) for c in children)


def parameters_error(schema: dict[str, Any]) -> str | None:
    """Why a function's `parameters` cannot be taken, or None. OpenAI takes a JSON Schema object:
    of type "object", or with no type (read as one). Depth is checked first: it stops at the
    limit, and measuring the size walks the whole schema."""
    if nested_deeper(schema, MAX_SCHEMA_DEPTH):
        return f"a schema nested at most {MAX_SCHEMA_DEPTH} levels deep is accepted"
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        return f"a schema of at most {MAX_SCHEMA_BYTES} bytes (as JSON) is accepted"
    if schema.get("type", "object") != "object":
        return 'a JSON Schema of type "object" is accepted (or one with no type, read as an object)'
    return None


# How json.dumps, with its default separators, begins a `function_tool`: where a reader of a
# prompt finds the definitions printed in it.
TOOL_JSON_START = '{"type": "function"'


def function_tool(
    name: str,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    strict: bool | None = None,
) -> dict[str, Any]:
    """A tool definition as OpenAI writes one, keys in OpenAI's order; None fields left out."""
    fields = {"name": name, "description": description, "parameters": parameters, "strict": strict}
    return {"type": "function", "function": {k: v for k, v in fields.items() if v is not None}}


def function_of(tool: Any) -> dict[str, Any] | None:
    """The function of a tool definition read back from JSON (`{name, parameters...}`), or None
    when `tool` is not one."""
    fn = tool.get("function") if isinstance(tool, dict) else None
    return fn if isinstance(fn, dict) and isinstance(fn.get("name"), str) else None


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """One entry of `message.tool_calls`; `arguments` is JSON text."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_call_start(index: int, call_id: str, name: str, arguments: str = "") -> dict[str, Any]:
    """A streamed call's first `delta.tool_calls` entry: which call it is, its id and name."""
    fn = {"name": name, "arguments": arguments}
    return {"index": index, "id": call_id, "type": "function", "function": fn}


def tool_call_fragment(index: int, arguments: str) -> dict[str, Any]:
    """A later `delta.tool_calls` entry: the next fragment of call `index`'s arguments."""
    return {"index": index, "function": {"arguments": arguments}}
