"""Named regexes from configuration, e.g. employee numbers or contract ids."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from .recognizers import Recognizer, Span


class PatternRecognizer(Recognizer):
    """Flags every match of one configured regex as ``kind``.

    The regex is the operator's: it should carry its own boundaries, and should use ASCII
    lookarounds like ``(?<![0-9A-Za-z])`` rather than ``\\b`` when values can touch CJK text.
    If it has a group named ``value``, only that group is redacted (context stays).
    """

    priority = 5  # configured patterns lose ties to checked built-ins

    def __init__(self, kind: str, regex: str | re.Pattern[str]) -> None:
        if not kind:
            raise ValueError("a pattern needs a name")
        self.kind = kind
        self.regex = re.compile(regex) if isinstance(regex, str) else regex
        self._group: int | str = "value" if "value" in self.regex.groupindex else 0

    def find(self, text: str) -> Iterator[Span]:
        for m in self.regex.finditer(text):
            start, end = m.span(self._group)
            if end > start:  # an empty match would redact nothing
                yield Span(start, end, self.kind, text[start:end])


def patterns_from_config(
    config: Mapping[str, Any] | list[Mapping[str, Any]] | None,
) -> list[PatternRecognizer]:
    """Build pattern recognizers from ``{name: regex}`` or ``[{"name": ..., "regex": ...}]``.

    Invalid regexes raise ``ValueError`` naming the pattern, so a bad config fails at load
    time rather than on the first request.
    """
    if not config:
        return []
    items = config.items() if isinstance(config, Mapping) else ((c["name"], c["regex"]) for c in config)
    out = []
    for name, regex in items:
        try:
            out.append(PatternRecognizer(str(name), regex))
        except re.error as exc:
            raise ValueError(f"PII pattern {name!r}: invalid regex: {exc}") from None
    return out
