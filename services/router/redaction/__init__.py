"""PII redaction for the router: recognizer plugins, policies and the Redactor.

Typical use (per agent, built once when its registry record changes)::

    policy = policy_from_proto(agent.data_policy, patterns=config_patterns)
    redactor = Redactor(policy, key=hash_key)
    result = redactor.redact(prompt)        # result.text, result.counts (kind -> n)
    args, counts = redactor.redact_json(tool_arguments)

Modes: MASK -> ``[PHONE]``; HASH -> ``[PHONE:hash:<16 hex of HMAC-SHA256>]`` over the
canonical value (E.164, lower-case email, digits-only card...), so the same value joins across
records without being stored; DROP -> removed.
"""

from .builtin import RECOGNIZERS, create, recognizer_class, registered
from .engine import RedactionResult, Redactor, UnknownKindError, resolve_overlaps
from .pattern import PatternRecognizer, patterns_from_config
from .policy import Mode, RedactionPolicy, parse_mode, policy_from_dict, policy_from_proto
from .recognizers import Recognizer, Span
from .stream import StreamRedactor

__all__ = [
    "RECOGNIZERS",
    "Mode",
    "PatternRecognizer",
    "Recognizer",
    "RedactionPolicy",
    "RedactionResult",
    "Redactor",
    "Span",
    "StreamRedactor",
    "UnknownKindError",
    "create",
    "parse_mode",
    "patterns_from_config",
    "policy_from_dict",
    "policy_from_proto",
    "recognizer_class",
    "registered",
    "resolve_overlaps",
]
