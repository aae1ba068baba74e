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
first one, with one value per required parameter (all of them when none is marked required)
drawn from its schema. After a tool result the model answers in text, as usual. This lets an
agent's tool loop run end to end on the simulator, and exercises each family's call parser; what
a real model would choose to call is of course not simulated.
"""

from __future__ import annotations

import json
import re
from typing import Any

OFFER = "Given the following functions, please respond with a JSON for a function call"
_LLAMA_HEADER = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n")
_CHATML_BLOCK = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\n", re.DOTALL)
_CHATML_TOOLS = re.compile(r"<tools>\n(.*?)\n</tools>", re.DOTALL)
_MISTRAL_TOOLS = re.compile(r"\[AVAILABLE_TOOLS\] (.*?)\[/AVAILABLE_TOOLS\]", re.DOTALL)
_MISTRAL_LAST_USER = re.compile(r"\[INST\] ((?:(?!\[INST\]).)*)\[/INST\]$", re.DOTALL)
_SAMPLES: dict[str, Any] = {
    "string": "sample", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {},
}  # fmt: skip

Offer = tuple[list[dict[str, Any]], str]  # the functions offered, the user's last words


def _sample(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "sample"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type", "string")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    return _SAMPLES.get(kind, "sample") if isinstance(kind, str) else "sample"


def _functions(text: str) -> tuple[list[dict[str, Any]], int]:
    """The OpenAI function definitions printed in `text`, and where the last one ends."""
    decoder, found, end, pos = json.JSONDecoder(), [], 0, text.find('{"type": "function"')
    while pos >= 0:
        try:
            obj, stop = decoder.raw_decode(text, pos)
        except ValueError:
            break
        fn = obj.get("function") if isinstance(obj, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            found.append(fn)
        end = stop
        pos = text.find('{"type": "function"', stop)
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
    return functions, last_user[defs_end:]


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


def _called(offer: Offer) -> list[dict[str, Any]]:
    """(name, arguments) of each call: the functions the user named, or the first one."""
    functions, said = offer
    named = [fn for fn in functions if re.search(rf"\b{re.escape(fn['name'])}\b", said)]
    out = []
    for fn in named or functions[:1]:
        params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
        props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
        required = params.get("required") if isinstance(params.get("required"), list) else list(props)
        out.append(
            {
                "name": fn["name"],
                "arguments": {n: _sample(props.get(n)) for n in required if isinstance(n, str)},
            }
        )
    return out


def tool_call_script(prompt: str) -> str | None:
    """The calls this prompt gets as its answer, in its family's format, or None (answer in text)."""
    if (offer := _llama(prompt)) and (calls := _called(offer)):
        return "; ".join(json.dumps({"name": c["name"], "parameters": c["arguments"]}) for c in calls)
    if (offer := _chatml(prompt)) and (calls := _called(offer)):
        return "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls)
    if (offer := _mistral(prompt)) and (calls := _called(offer)):
        return "[TOOL_CALLS] " + json.dumps(calls)
    return None
