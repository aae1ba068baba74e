"""Chat templates per model family: how a conversation (and the tools offered) becomes the
prompt an engine completes, and how tool calls are read back from its answer.

The router hands engines a rendered prompt (Triton's `text_input`, an OpenAI engine's
`/v1/completions`), so the model's own chat format is applied here, chosen by the catalog model's
`family`. Each template follows its family's published chat template (Hugging Face
`tokenizer_config.json`), minus the BOS token: the engines' tokenizers add it to a completion
prompt themselves, and a second one degrades the answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from services.router.chat.stream import read_calls
from services.router.chat.types import (
    NONE,
    REQUIRED,
    ChatMessage,
    Parsed,
    ToolChoice,
    ToolSpec,
    dumps,
)


def offered(tools: Sequence[ToolSpec], choice: ToolChoice) -> list[ToolSpec]:
    """The tools the model is shown: none for `none`, only the named one for a function choice."""
    if choice.mode == NONE:
        return []
    if choice.function:
        return [t for t in tools if t.name == choice.function]
    return list(tools)


class ChatTemplate:
    """One family's format. How the model writes calls (stream.py reads them): `call_markers`
    begin a group of calls (held back while streaming until it is known), at the start of the
    answer or, with `markers_anywhere`, after some text too; then `call_open` (optional), JSON
    objects `{"name": ..., "arguments"|"parameters": {...}}` between `call_separators`, and
    `call_close`."""

    name = ""
    supports_tools = False
    call_markers: tuple[str, ...] = ()
    markers_anywhere = False
    call_open = ""
    call_separators = " \t\r\n"
    call_close = ""

    def render(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        choice: ToolChoice = ToolChoice(),
    ) -> str:
        raise NotImplementedError

    def parse(self, text: str, tools: Sequence[ToolSpec]) -> Parsed:
        """The answer's text and tool calls; anything that is not a call of an offered tool
        stays text."""
        return read_calls(self, text, tools) if self.supports_tools else Parsed(text)


class Neutral(ChatTemplate):
    """For families without a known format: role markers a completion model can follow. No tools."""

    name = "neutral"

    def render(self, messages, tools=(), choice=ToolChoice()) -> str:
        return "".join(f"<|{m.role}|>\n{m.content}\n" for m in messages) + "<|assistant|>\n"


def _must_call(choice: ToolChoice) -> str:
    if choice.function:
        return f"You must call the function {choice.function}."
    return "You must call one of the functions." if choice.mode == REQUIRED else ""


class Llama3(ChatTemplate):
    """Llama 3 / 3.1 / 3.2 / 3.3 Instruct: header blocks ended by <|eot_id|>. Tools as Llama 3.1
    defines them: `Environment: ipython` in the system block, the function definitions in the
    first user message, a call answered as {"name", "parameters"} JSON, results as `ipython`."""

    name = "llama-3"
    supports_tools = True
    call_markers = ("{", "<|python_tag|>")
    call_separators = " \t\r\n;"  # several calls: `{...}; {...}`

    @staticmethod
    def _block(role: str, content: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"

    def render(self, messages, tools=(), choice=ToolChoice()) -> str:
        shown = offered(tools, choice)
        out: list[str] = []
        if shown and not any(m.role == "system" for m in messages):
            out.append(self._block("system", "Environment: ipython"))
        first_user = True
        for m in messages:
            if m.role == "system":
                out.append(
                    self._block("system", f"Environment: ipython\n\n{m.content}" if shown else m.content)
                )
            elif m.role == "user":
                content = m.content
                if shown and first_user:
                    content = self._tools_preamble(shown, choice) + content
                first_user = False
                out.append(self._block("user", content))
            elif m.role == "tool":
                out.append(self._block("ipython", m.content))
            elif m.tool_calls:
                calls = "; ".join(
                    dumps({"name": c.name, "parameters": json.loads(c.arguments or "{}")})
                    for c in m.tool_calls
                )
                out.append(self._block("assistant", calls))
            else:
                out.append(self._block("assistant", m.content))
        return "".join(out) + "<|start_header_id|>assistant<|end_header_id|>\n\n"

    @staticmethod
    def _tools_preamble(tools: Sequence[ToolSpec], choice: ToolChoice) -> str:
        lines = [
            "Given the following functions, please respond with a JSON for a function call with its "
            "proper arguments that best answers the given prompt.",
            "",
            (
                'Respond in the format {"name": function name, "parameters": dictionary of argument name '
                "and its value}. Do not use variables. " + _must_call(choice)
            ).rstrip(),
            "",
        ]
        for tool in tools:
            lines += [dumps(tool.as_json()), ""]
        return "\n".join(lines) + "\n"


class ChatML(ChatTemplate):
    """Qwen 2 / 2.5 / 3, Yi, Hermes: <|im_start|>role ... <|im_end|> blocks. Tools as Hermes
    and Qwen define them: <tools> in the system block, calls as <tool_call>{json}</tool_call>,
    results as <tool_response> in a user block."""

    name = "chatml"
    supports_tools = True
    call_markers = ("<tool_call>",)
    markers_anywhere = True
    call_close = "</tool_call>"

    def render(self, messages, tools=(), choice=ToolChoice()) -> str:
        shown = offered(tools, choice)
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        if shown:
            defs = "\n".join(dumps(t.as_json()) for t in shown)
            system = (system + "\n\n" if system else "") + (
                "# Tools\n\nYou may call one or more functions to assist with the user query. "
                f"{_must_call(choice)}\n\nYou are provided with function signatures within <tools></tools> "
                f"XML tags:\n<tools>\n{defs}\n</tools>\n\nFor each function call, return a json object with "
                "function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
            )
        out = [f"<|im_start|>system\n{system}<|im_end|>\n"] if system else []
        results: list[str] = []
        for m in messages:
            if m.role == "tool":
                results.append(f"<tool_response>\n{m.content}\n</tool_response>")
                continue
            if results:  # consecutive tool results go back in one user turn
                out.append("<|im_start|>user\n" + "\n".join(results) + "<|im_end|>\n")
                results = []
            if m.role == "system":
                continue
            content = m.content
            for c in m.tool_calls:
                call = dumps({"name": c.name, "arguments": json.loads(c.arguments or "{}")})
                content += f"\n<tool_call>\n{call}\n</tool_call>"
            out.append(f"<|im_start|>{m.role}\n{content.lstrip(chr(10))}<|im_end|>\n")
        if results:
            out.append("<|im_start|>user\n" + "\n".join(results) + "<|im_end|>\n")
        return "".join(out) + "<|im_start|>assistant\n"


class Mistral(ChatTemplate):
    """Mistral / Mixtral Instruct (v3 tokenizer): [INST] ... [/INST] turns, the system prompt in
    the last user turn; tools as [AVAILABLE_TOOLS] before it, calls as [TOOL_CALLS] [json list],
    results as [TOOL_RESULTS]."""

    name = "mistral"
    supports_tools = True
    call_markers = ("[TOOL_CALLS]",)
    call_open, call_separators, call_close = "[", " \t\r\n,", "]"

    def render(self, messages, tools=(), choice=ToolChoice()) -> str:
        shown = offered(tools, choice)
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        turns = [m for m in messages if m.role != "system"]
        last_user = max((i for i, m in enumerate(turns) if m.role == "user"), default=-1)
        out: list[str] = []
        for i, m in enumerate(turns):
            if m.role == "user":
                content = m.content
                if i == last_user:
                    if shown:
                        defs = dumps([t.as_json() for t in shown])
                        out.append(f"[AVAILABLE_TOOLS] {defs}[/AVAILABLE_TOOLS]")
                    must = _must_call(choice) if shown else ""
                    content = "\n\n".join(p for p in (system, must, content) if p)
                out.append(f"[INST] {content}[/INST]")
            elif m.role == "tool":
                result = dumps({"content": m.content, "call_id": m.tool_call_id})
                out.append(f"[TOOL_RESULTS] {result}[/TOOL_RESULTS]")
            elif m.tool_calls:
                calls = [
                    {"name": c.name, "arguments": json.loads(c.arguments or "{}"), "id": c.id}
                    for c in m.tool_calls
                ]
                out.append(f"[TOOL_CALLS] {dumps(calls)}</s>")
            else:
                out.append(f" {m.content}</s>")
        return "".join(out)
