"""Tool calls, as a Llama 3.1 Instruct model makes them, for prompts that offer functions.

A prompt rendered with Llama 3's chat template whose first user turn lists functions
("Given the following functions, ...", each definition as OpenAI's function JSON) and whose
last turn before the assistant's is the user's (not a tool result, `ipython`) is answered with a
call of the first function listed: `{"name": ..., "parameters": {...}}`, one value per required
parameter (all of them when none is marked required) drawn from its schema. After a tool result
the model answers in text, as usual. This lets an agent's tool loop run end to end on the
simulator; what a real model would choose to call is of course not simulated.
"""

from __future__ import annotations

import json
import re
from typing import Any

OFFER = "Given the following functions, please respond with a JSON for a function call"
_HEADER = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>")
_SAMPLES: dict[str, Any] = {
    "string": "sample", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {},
}  # fmt: skip


def _sample(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "sample"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type", "string")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    return _SAMPLES.get(kind, "sample") if isinstance(kind, str) else "sample"


def _first_function(prompt: str, start: int) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    pos = prompt.find('{"type": "function"', start)
    if pos < 0:
        return None
    try:
        obj, _ = decoder.raw_decode(prompt, pos)
    except ValueError:
        return None
    fn = obj.get("function") if isinstance(obj, dict) else None
    return fn if isinstance(fn, dict) and isinstance(fn.get("name"), str) else None


def tool_call_script(prompt: str) -> str | None:
    """The call this prompt gets as its answer, or None (answer in text)."""
    offer = prompt.find(OFFER)
    if offer < 0:
        return None
    roles = _HEADER.findall(prompt)
    if len(roles) < 2 or roles[-1] != "assistant" or roles[-2] != "user":
        return None
    fn = _first_function(prompt, offer)
    if fn is None:
        return None
    params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
    props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
    required = params.get("required") if isinstance(params.get("required"), list) else list(props)
    args = {name: _sample(props.get(name)) for name in required if isinstance(name, str)}
    return json.dumps({"name": fn["name"], "parameters": args})
