"""The Redactor: applies a RedactionPolicy to text (prompts, tool arguments and results, output).

Per call: the text is folded for matching (normalize.py: full-width digits, invisible
separators), one regex pass per enabled recognizer plus one over long digit runs (glued.py),
then overlap resolution, spans mapped back to the original text, and one join. The result
carries counts per kind only, never the values, so it is safe to put in audit events.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .builtin import create, registered
from .glued import glued_spans
from .normalize import Normalized, normalize
from .policy import Mode, RedactionPolicy
from .recognizers import Recognizer, Span

DEFAULT_HASH_CHARS = 16  # 64 bits of HMAC-SHA256: no practical collisions when joining


@dataclass(frozen=True, slots=True)
class RedactionResult:
    text: str
    counts: dict[str, int] = field(default_factory=dict)  # kind -> values treated

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class UnknownKindError(ValueError):
    """A policy names a kind that no built-in recognizer or configured pattern provides."""


def resolve_overlaps(spans: Iterable[Span], priority: Mapping[str, int]) -> list[Span]:
    """Keep non-overlapping spans: longest first, then higher priority, then earlier, then kind.

    The order is total, so the outcome does not depend on recognizer order. Returned sorted by
    start.
    """
    ranked = sorted(spans, key=lambda s: (s.start - s.end, -priority.get(s.kind, 0), s.start, s.kind))
    starts: list[int] = []
    kept: list[Span] = []  # parallel to starts, sorted by start
    for s in ranked:
        i = bisect.bisect_left(starts, s.start)
        if i > 0 and kept[i - 1].end > s.start:
            continue  # overlaps the kept span to its left
        if i < len(kept) and kept[i].start < s.end:
            continue  # overlaps the kept span to its right
        starts.insert(i, s.start)
        kept.insert(i, s)
    return kept


class Redactor:
    """Redacts per one agent's policy. Build once per (policy, key) and reuse: it is stateless.

    ``key`` is the HMAC key for HASH mode (required when any rule hashes). ``strict=False``
    skips kinds nobody recognizes (listed in ``unknown_kinds``) instead of raising; the default
    fails closed so a typo in a policy is not silently a leak.
    """

    def __init__(
        self,
        policy: RedactionPolicy,
        key: bytes | str | None = None,
        *,
        hash_chars: int = DEFAULT_HASH_CHARS,
        strict: bool = True,
    ) -> None:
        self.policy = policy
        self.modes: dict[str, Mode] = {}
        self.unknown_kinds: list[str] = []
        self._recognizers: list[Recognizer] = []
        patterns = {p.kind: p for p in policy.patterns}
        builtins = set(registered()) - {"pattern"}
        for name in patterns.keys() & builtins:
            raise ValueError(f"PII pattern {name!r} shadows the built-in recognizer of that name")
        for kind, mode in policy.rules.items():
            if kind in patterns:
                rec: Recognizer = patterns[kind]
            elif kind in builtins:
                rec = create(kind)
            elif strict:
                raise UnknownKindError(f"no recognizer or configured pattern for PII kind {kind!r}")
            else:
                self.unknown_kinds.append(kind)
                continue
            self.modes[kind] = mode
            self._recognizers.append(rec)
        self._priority = {r.kind: r.priority for r in self._recognizers}
        self._by_kind = {r.kind: r for r in self._recognizers}
        # Text matching none of the recognizers' `needs` holds no value (most streamed chunks:
        # words without digits): one search instead of every recognizer's. Glued runs are
        # digits, which their recognizers need. None when any recognizer promises nothing.
        needs = [r.needs for r in self._recognizers]
        self._prefilter: re.Pattern[str] | None = (
            re.compile("|".join(f"(?:{n})" for n in sorted(set(needs))))  # type: ignore[arg-type]
            if needs and None not in needs
            else None
        )
        partials = [r.partial for r in self._recognizers]
        # Matches (searching from the left) the earliest suffix that could be an unfinished value.
        self.unfinished: re.Pattern[str] | None = (
            re.compile("(?:" + "|".join(f"(?:{p})" for p in partials) + r")\Z")
            if partials and None not in partials
            else None
        )
        if Mode.HASH in self.modes.values() and not key:
            raise ValueError("a policy with hash mode needs a key")
        if not 8 <= hash_chars <= 64:
            raise ValueError("hash_chars must be 8..64")
        self._hash_chars = hash_chars
        self._strict = strict
        self._key = key
        self._mac = (
            hmac.new(key.encode() if isinstance(key, str) else key, digestmod=hashlib.sha256) if key else None
        )

    def __reduce__(self):
        """Pickled as its inputs (a worker process rebuilds it): the HMAC state does not pickle."""
        return _rebuild, (self.policy, self._key, self._hash_chars, self._strict)

    @property
    def enabled(self) -> bool:
        return bool(self._recognizers)

    def find(self, text: str, folded: Normalized | None = None) -> list[Span]:
        """The spans that would be redacted, sorted by start (values included: do not log);
        `folded` is normalize(text) where the caller has it already."""
        folded = normalize(text) if folded is None else folded
        seen = folded.text
        if self._prefilter is not None and self._prefilter.search(seen) is None:
            return []
        spans = [s for r in self._recognizers for s in r.find(seen)]
        spans += glued_spans(seen, self._by_kind)
        spans = resolve_overlaps(spans, self._priority) if len(spans) > 1 else spans
        return folded.to_original(spans, text) if folded.changed else spans

    def redact(self, text: str) -> RedactionResult:
        if not self._recognizers or not text:
            return RedactionResult(text, {})
        spans = self.find(text)
        if not spans:
            return RedactionResult(text, {})
        parts: list[str] = []
        pos = 0
        for s in spans:
            parts.append(text[pos : s.start])
            parts.append(self.replacement(s))
            pos = s.end
        parts.append(text[pos:])
        return RedactionResult("".join(parts), dict(Counter(s.kind for s in spans)))

    def replacement(self, span: Span) -> str:
        mode = self.modes[span.kind]
        if mode is Mode.DROP:
            return ""
        label = span.kind.upper()
        if mode is Mode.HASH:
            return f"[{label}:hash:{self.keyed_hash(span.kind, span.key_value)}]"
        return f"[{label}]"

    def keyed_hash(self, kind: str, canonical: str) -> str:
        """HMAC-SHA256(key, kind NUL canonical value), hex, truncated.

        The kind is in the input so the same digits as a card and as an ID do not join.
        """
        assert self._mac is not None
        mac = self._mac.copy()
        mac.update(f"{kind}\0{canonical}".encode())
        return mac.hexdigest()[: self._hash_chars]

    def redact_json(self, value: Any) -> tuple[Any, dict[str, int]]:
        """Redact JSON-like data (tool arguments and results): every string, every dict key and
        every integral number (a phone or card sent as a JSON number); a number that held a
        value becomes its redacted text. Returns the new value and merged counts.
        """
        counts: Counter[str] = Counter()

        def text(v: str) -> str:
            r = self.redact(v)
            counts.update(r.counts)
            return r.text

        def number(v: int | float) -> Any:
            if isinstance(v, float) and not (v.is_integer() and abs(v) < 1e20):
                return v
            digits = str(int(v))
            masked = text(digits)
            return masked if masked != digits else v

        def walk(v: Any) -> Any:
            if isinstance(v, str):
                return text(v)
            if isinstance(v, int | float) and not isinstance(v, bool):
                return number(v)
            if isinstance(v, Mapping):
                out: dict[Any, Any] = {}
                for k, x in v.items():
                    key = text(k) if isinstance(k, str) else k
                    while key in out:  # two keys redacted alike: keep both
                        key = f"{key}#"
                    out[key] = walk(x)
                return out
            if isinstance(v, list | tuple):
                return [walk(x) for x in v]
            return v

        out = walk(value) if self._recognizers else value
        return out, dict(counts)


def _rebuild(policy: RedactionPolicy, key: bytes | str | None, hash_chars: int, strict: bool) -> Redactor:
    return Redactor(policy, key, hash_chars=hash_chars, strict=strict)
