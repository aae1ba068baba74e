"""Tool calls, as instruct models write them, for prompts that offer functions.

A prompt rendered with a known family's chat template that offers functions, and whose last
turn is the user's (not a tool result), is answered with calls in that family's format:

- Llama 3.1 (functions in the first user turn after "Given the following functions, ..."):
  `{"name": ..., "parameters": {...}}`, several joined by `; `;
- Hermes / Qwen ChatML (`<tools>` in the system block): `<tool_call>\\n{"name": ...,
  "arguments": {...}}\\n</tool_call>` per call;
- Mistral (`[AVAILABLE_TOOLS] [...][/AVAILABLE_TOOLS]`): `[TOOL_CALLS] [{"name": ...,
  "arguments": {...}}, ...]`.

It calls each offered function the user's last turn names (in the order offered), or else the
first one, with one value per required parameter (all of them when none is marked required),
built from its schema with words and numbers of that turn (`ArgumentValues`). After a tool result
the model answers in text, as usual. This lets an agent's tool loop run end to end on the
simulator, and exercises each family's call parser; what a real model would choose to call is of
course not simulated. The OpenAI chat API (openai_tools.py) chooses its calls the same way.
"""

from __future__ import annotations

import json
import re
from typing import Any

from services.common.openai_tool_calls import TOOL_JSON_START, function_of

OFFER = "Given the following functions, please respond with a JSON for a function call"
_LLAMA_HEADER = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n")
_CHATML_BLOCK = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\n", re.DOTALL)
_CHATML_TOOLS = re.compile(r"<tools>\n(.*?)\n</tools>", re.DOTALL)
_MISTRAL_TOOLS = re.compile(r"\[AVAILABLE_TOOLS\] (.*?)\[/AVAILABLE_TOOLS\]", re.DOTALL)
_MISTRAL_LAST_USER = re.compile(r"\[INST\] ((?:(?!\[INST\]).)*)\[/INST\]$", re.DOTALL)
_SAMPLES: dict[str, Any] = {
    "string": "sample", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {},
}  # fmt: skip
_TOKEN = re.compile(r'"([^"\n]{1,200})"|(-?\d+(?:\.\d+)?)|([^\W\d_][\w\'-]*)')
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FILLER = frozenset(
    "a an and are as at be by call can could do for from get give how i in is it me my no not of on or "
    "please show tell that the then this to use what when where which who why will with would you".split()
)
_NEGATION = re.compile(r"\b(?:no|not|never|without|false|don't|doesn't)\b", re.IGNORECASE)
MAX_DEPTH = 8  # nested objects and arrays filled in; deeper ones are left empty

Offer = tuple[list[dict[str, Any]], str]  # the functions offered, the user's last words


def _properties(schema: Any) -> dict[str, Any]:
    props = schema.get("properties") if isinstance(schema, dict) else None
    return props if isinstance(props, dict) else {}


class ArgumentValues:
    """Arguments for a function's JSON Schema, drawn from what the user said: strings are its
    quoted phrases, then its words from the last one back (not filler words, nor the names of
    functions, parameters or enum values), then its numbers; integers and numbers are its
    numbers in order; an enum takes the first of its values the user said, else its first;
    booleans are true unless the user negated something. Where the text has nothing to offer,
    a fixed sample of the type."""

    def __init__(self, said: str, names: frozenset[str] = frozenset()) -> None:
        self.said, self.negated = said, bool(_NEGATION.search(said))
        found = _TOKEN.findall(said)
        skip = _FILLER | {n.lower() for n in names}
        words = [w for _, _, w in reversed(found) if w and w.lower() not in skip]
        self.strings = [q for q, _, _ in found if q] + words + [n for _, n, _ in reversed(found) if n]
        self.numbers = [float(n) if "." in n else int(n) for n in _NUMBER.findall(said)]
        self._next = {"string": 0, "number": 0}

    def arguments(self, schema: Any, depth: int = 0) -> dict[str, Any]:
        props = _properties(schema)
        required = schema.get("required") if isinstance(schema, dict) else None
        required = required if isinstance(required, list) else list(props)
        return {n: self.value(props.get(n), depth) for n in required if isinstance(n, str)}

    def value(self, schema: Any, depth: int = 0) -> Any:
        schema = schema if isinstance(schema, dict) else {}
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            said = self.said.lower()
            return next((v for v in schema["enum"] if isinstance(v, str) and v and v.lower() in said),
                        schema["enum"][0])  # fmt: skip
        options = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(options, list) and options:
            return self.value(options[0], depth)
        kind = schema.get("type", "string")
        kind = next((k for k in kind if k != "null"), "null") if isinstance(kind, list) else kind
        if kind in ("integer", "number"):
            n = self._take("number", self.numbers)
            return _SAMPLES[kind] if n is None else (int(n) if kind == "integer" else float(n))
        if kind == "string":
            text = self._take("string", self.strings)
            limit = schema.get("maxLength")
            return (text or "sample")[: limit if isinstance(limit, int) and limit > 0 else None]
        if kind == "boolean":
            return not self.negated
        if kind == "array" and depth < MAX_DEPTH and isinstance(schema.get("items"), dict):
            return [self.value(schema["items"], depth + 1)]
        if kind == "object" and depth < MAX_DEPTH:
            return self.arguments(schema, depth + 1)
        return None if kind == "null" else _SAMPLES.get(kind, "sample") if isinstance(kind, str) else "sample"

    def _take(self, kind: str, pool: list[Any]) -> Any:
        """The next of `pool` (round and round), None when it is empty."""
        if not pool:
            return None
        i, self._next[kind] = self._next[kind], self._next[kind] + 1
        return pool[i % len(pool)]


def _functions(text: str) -> tuple[list[dict[str, Any]], int]:
    """The OpenAI function definitions printed in `text`, and where the last one ends."""
    decoder, found, end, pos = json.JSONDecoder(), [], 0, text.find(TOOL_JSON_START)
    while pos >= 0:
        try:
            obj, stop = decoder.raw_decode(text, pos)
        except ValueError:
            break
        if (fn := function_of(obj)) is not None:
            found.append(fn)
        end = stop
        pos = text.find(TOOL_JSON_START, stop)
    return found, end


def _llama(prompt: str) -> Offer | None:
    turns = list(_LLAMA_HEADER.finditer(prompt))
    if len(turns) < 2 or turns[-1].group(1) != "assistant" or turns[-2].group(1) != "user":
        return None
    offer = prompt.find(OFFER)
    if offer < 0:
        return None
    block_end = prompt.find("<|eot_id|>", offer)
    functions, _ = _functions(prompt[offer:block_end])
    last_user = prompt[turns[-2].end() : turns[-1].start()]
    _, defs_end = _functions(last_user)  # the first user turn also holds the definitions
    return functions, last_user[defs_end:].removesuffix("<|eot_id|>")


def _chatml(prompt: str) -> Offer | None:
    blocks = _CHATML_BLOCK.findall(prompt)
    if not prompt.endswith("<|im_start|>assistant\n") or not blocks or blocks[0][0] != "system":
        return None
    role, content = blocks[-1]
    tools = _CHATML_TOOLS.search(blocks[0][1])
    if role != "user" or content.startswith("<tool_response>") or tools is None:
        return None
    return _functions(tools.group(1))[0], content


def _mistral(prompt: str) -> Offer | None:
    tools, last_user = _MISTRAL_TOOLS.search(prompt), _MISTRAL_LAST_USER.search(prompt)
    if tools is None or last_user is None:
        return None
    return _functions(tools.group(1))[0], last_user.group(1)


def choose_calls(functions: list[dict[str, Any]], said: str) -> list[dict[str, Any]]:
    """{name, arguments} of each call: the functions the user named (in the order offered), or
    else the first one; `functions` are OpenAI function definitions ({name, parameters})."""
    named = [fn for fn in functions if re.search(rf"\b{re.escape(fn['name'])}\b", said)]
    calls = []
    for fn in named or functions[:1]:
        props = _properties(fn.get("parameters"))
        enums = [
            v
            for p in props.values()
            if isinstance(p, dict)
            for v in p.get("enum") or ()
            if isinstance(v, str)
        ]
        names = frozenset(f["name"] for f in functions) | frozenset(props) | frozenset(enums)
        calls.append(
            {"name": fn["name"], "arguments": ArgumentValues(said, names).arguments(fn.get("parameters"))}
        )
    return calls


def tool_call_script(prompt: str) -> str | None:
    """The calls this prompt gets as its answer, in its family's format, or None (answer in text)."""
    if (offer := _llama(prompt)) and (calls := choose_calls(*offer)):
        return "; ".join(json.dumps({"name": c["name"], "parameters": c["arguments"]}) for c in calls)
    if (offer := _chatml(prompt)) and (calls := choose_calls(*offer)):
        return "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls)
    if (offer := _mistral(prompt)) and (calls := choose_calls(*offer)):
        return "[TOOL_CALLS] " + json.dumps(calls)
    return None
