"""What a call may cost before it runs: Validate (sizes, sampling, context length), RedactPrompt
(the agent's data policy, before the model, the cache key and the log see the prompt),
RateAdmit (RPM/TPM) and BudgetReserve (the maximum cost against every budget that applies)."""

from __future__ import annotations

from harness.registry.v1 import registry_pb2

from services.common.errors import InvalidArgument
from services.common.limits import check_count, check_range, check_stop_strings, holds_nul
from services.common.registry_mirror import RegistryMirror
from services.router.budgets import BudgetEnforcer, Subjects
from services.router.call import Call, GenerationInput
from services.router.chat import NONE, ChatMessage, ChatTemplate, ToolSpec, as_message, template_for
from services.router.engine import CHARS_PER_TOKEN, estimate_tokens
from services.router.flow import RateLimiter, RateLimits
from services.router.pipeline import Stage
from services.router.privacy import AgentRedactors, OutputRedaction

MAX_PROMPT_CHARS = 1_000_000
MAX_MESSAGES = 1_000
MAX_OUTPUT_TOKENS = 1_000_000
MAX_TEMPERATURE = 100.0
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256
ROLES = ("system", "user", "assistant", "tool")  # common.proto's ChatMessage.role


def render_prompt(inp: GenerationInput, template: ChatTemplate | None = None) -> str:
    """The prompt as given, or the messages (and tools) in the model family's chat format. A NUL
    character in it is refused, naming where it was sent: gRPC callers are refused it in every
    string (the services' interceptor), so every front door refuses it alike."""
    if bool(inp.prompt) == bool(inp.messages):
        raise InvalidArgument("set exactly one of `prompt` or `messages`")
    if inp.prompt:
        if inp.tools:
            raise InvalidArgument("tools need `messages`: a raw prompt has no place for them")
        if "\x00" in inp.prompt:
            raise holds_nul("prompt")
        return inp.prompt
    messages = [as_message(m) for m in inp.messages]
    for i, m in enumerate(messages):
        if m.role not in ROLES:  # a template writes the role into the prompt as is
            shown = m.role[:32] + ("..." if len(m.role) > 32 else "")
            raise InvalidArgument(f"messages[{i}].role is {shown!r}: use one of {', '.join(ROLES)}")
    template = template or template_for("")
    prompt = template.render(messages, inp.tools, inp.tool_choice)
    if "\x00" in prompt:  # one scan of the text the model would read; where, only when found
        raise holds_nul(_nul_field(messages, inp.tools))
    return prompt


def _nul_field(messages: list[ChatMessage], tools: tuple[ToolSpec, ...]) -> str:
    """Where a NUL in the rendered prompt came from (templates write JSON, escaped, for tool
    calls' arguments and tools' schemas, so those hold none)."""
    for i, m in enumerate(messages):
        for name in ("content", "name", "tool_call_id"):
            if "\x00" in getattr(m, name):
                return f"messages[{i}].{name}"
        if any("\x00" in c.name or "\x00" in c.arguments for c in m.tool_calls):
            return f"messages[{i}].tool_calls"
    for i, tool in enumerate(tools):
        if "\x00" in tool.name or "\x00" in tool.description:
            return f"tools[{i}]"
    return "the prompt"


def choose_template(call: Call) -> ChatTemplate:
    """The catalog model's family's template; tools only where the family has a tool format."""
    family = call.catalog.family if call.catalog is not None else ""
    template = template_for(family)
    inp = call.inp
    if inp.tools and inp.tool_choice.mode != NONE and not template.supports_tools:
        raise InvalidArgument(
            f"model {call.model!r} (family {family or 'not set'!r}) has no tool-call format this router "
            "knows (llama-3, qwen, mistral and related families have one); leave out the tools or pick "
            "another model"
        )
    if inp.tool_choice.function and inp.tool_choice.function not in {t.name for t in inp.tools}:
        raise InvalidArgument(f"tool_choice names {inp.tool_choice.function!r}, which is not among the tools")
    return template


class Validate(Stage):
    """Sizes, sampling and the context length, checked before any work is spent on the prompt."""

    name = "validate"

    def __init__(self, default_max_tokens: int) -> None:
        self.default_max_tokens = default_max_tokens

    async def enter(self, call: Call) -> None:
        inp = call.inp
        if call.catalog.kind == registry_pb2.MODEL_KIND_EMBEDDING:
            raise InvalidArgument(
                f"model {call.model!r} is an embedding model: it makes vectors, not text; "
                "call Embed (POST /v1/embeddings) with it, or generate with another model"
            )
        call.template = choose_template(call)
        prompt = render_prompt(inp, call.template)
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        if not prompt.strip():
            raise InvalidArgument("the prompt is empty")
        if inp.max_tokens < 0 or inp.temperature < 0 or not 0 <= inp.top_p <= 1 or inp.top_k < 0:
            raise InvalidArgument(
                "sampling: max_tokens, temperature and top_k must be >= 0 and top_p in [0, 1]"
            )
        check_sampling_bounds(inp)
        version = next(v for v in call.agent.versions if v.version == call.agent_version)
        call.max_tokens = inp.max_tokens or version.default_sampling.max_tokens or self.default_max_tokens
        call.prompt, call.prompt_tokens = prompt, estimate_tokens(prompt)
        check_context(call)


def check_sampling_bounds(inp: GenerationInput) -> None:
    """The limits router.proto and common.proto write on sampling (NaN passes the sign checks)."""
    check_range("sampling.temperature", inp.temperature, 0, MAX_TEMPERATURE)
    check_range("sampling.max_tokens", inp.max_tokens, 0, MAX_OUTPUT_TOKENS)
    check_range("sampling.top_k", inp.top_k, 0, MAX_OUTPUT_TOKENS)
    check_stop_strings("sampling.stop", inp.stop, MAX_STOP_SEQUENCES, MAX_STOP_CHARS)
    check_count("messages", inp.messages, MAX_MESSAGES)


def check_context(call: Call) -> None:
    context = call.catalog.context_length
    if context and call.prompt_tokens + call.max_tokens > context:
        raise InvalidArgument(
            f"prompt (~{call.prompt_tokens} tokens at {CHARS_PER_TOKEN} characters per token) plus "
            f"max_tokens {call.max_tokens} exceeds model {call.model!r}'s context of {context} tokens"
        )


class RedactPrompt(Stage):
    """Masks, hashes or drops PII in the prompt per the agent's data policy, and prepares the
    output redaction that RedactOutput applies to the answer."""

    name = "redact-prompt"

    def __init__(self, redactors: AgentRedactors) -> None:
        self.redactors = redactors

    async def enter(self, call: Call) -> None:
        call.prompt, call.output = await self.redactors.prompt(call.agent, call.prompt, call.redactions)
        call.prompt_tokens = estimate_tokens(call.prompt)
        check_context(call)  # hash mode lengthens values


class RedactOutput(Stage):
    """Redacts the answer as it streams (holding back only text that could begin a value)."""

    name = "redact-output"

    async def on_chunk(self, call: Call, chunk):
        output: OutputRedaction | None = call.output
        if output is None or call.answer is not None:  # a cached answer was redacted when stored
            return chunk
        text = await output.feed(chunk.text) if chunk.text else ""
        if chunk.final:  # the engine's last word: release what redaction held with it
            text += output.flush()
        return type(chunk)(text, chunk.final, chunk.output_tokens)


class RateAdmit(Stage):
    """Charges one request and its estimated tokens against the agent's and user's limits; the
    completion replaces the estimate with the real count (or refunds a call that never ran)."""

    name = "rate-admit"

    def __init__(self, registry: RegistryMirror, limiter: RateLimiter) -> None:
        self.registry = registry
        self.limiter = limiter

    async def enter(self, call: Call) -> None:
        agent, user_name = call.agent, call.ctx.identity.user
        user = await self.registry.user(user_name)  # None: a JWT subject the registry does not list
        limits = RateLimits(
            agent_rpm=agent.rpm_limit,
            agent_tpm=agent.tpm_limit,
            user_rpm=user.rpm_limit if user else 0,
            user_tpm=user.tpm_limit if user else 0,
        )
        tokens = call.prompt_tokens + call.max_tokens
        call.rate_hold = await self.limiter.admit(agent.name, user_name, limits, tokens)

    async def release(self, call: Call, error: BaseException | None) -> None:
        if call.rate_hold is None:
            return
        used = call.input_tokens + call.output_tokens if call.reached_backend else 0
        await self.limiter.settle(call.rate_hold, used, refund_request=not call.reached_backend)


class BudgetReserve(Stage):
    """Reserves the call's maximum cost (tokens and its GPU-time bound) against every budget that
    applies; the completion prices the call (Record writes the cost), the release settles that
    actual cost (nothing for a refused or cached call)."""

    name = "budget-reserve"

    def __init__(self, budgets: BudgetEnforcer) -> None:
        self.budgets = budgets

    async def enter(self, call: Call) -> None:
        agent, tokens = call.agent, call.prompt_tokens + call.max_tokens
        call.gpu_cap_s = self.budgets.gpu_bound_s(call.model, tokens)
        who = Subjects(call.ctx.identity.user, call.team, agent.project, agent.name)
        call.budget_hold = await self.budgets.reserve(who, call.model, call.prompt_tokens, call.max_tokens)

    async def complete(self, call: Call, error: BaseException | None) -> None:
        if call.charged:  # learn from the real share, not the capped one
            self.budgets.gpu.observe(call.model, call.input_tokens + call.output_tokens, call.gpu_seconds)
            actual = (call.input_tokens, call.output_tokens, call.gpu_type, call.charged_gpu_s)
            call.cost_micro_usd = self.budgets.cost(call.model, *actual)

    async def release(self, call: Call, error: BaseException | None) -> None:
        if call.budget_hold is not None:
            await self.budgets.settle(call.budget_hold, call.cost_micro_usd)
