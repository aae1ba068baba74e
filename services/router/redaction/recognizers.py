"""Recognizer plugin interface (the built-in recognizers are listed in builtin.py).

A recognizer finds one kind of PII in text and returns spans. Each one is a cheap, precompiled
regex pass that proposes candidates plus a validator (checksum, date, phone metadata) that
rejects look-alikes, so a number that fails its checksum is never flagged.

Boundaries: Python's ``\\b`` and ``\\w`` are Unicode-aware, so CJK characters count as word
characters and ``\\b`` fails in "电话13812345678". Recognizers therefore use lookarounds on
ASCII letters and digits only (``NOT_AFTER_ALNUM`` / ``NOT_BEFORE_ALNUM``) and ``[0-9]``
rather than ``\\d`` (which would also match full-width and other Unicode digits).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

# A match may not be glued to an ASCII letter or digit; anything else (CJK, punctuation,
# whitespace, start/end of text) is a boundary.
NOT_AFTER_ALNUM = r"(?<![0-9A-Za-z])"
NOT_BEFORE_ALNUM = r"(?![0-9A-Za-z])"


@dataclass(frozen=True, slots=True)
class Span:
    """One finding: ``text[start:end] == value``.

    ``canonical`` is the normalized value (E.164 phone, lower-case email, digits-only card)
    so the keyed hash of one value is the same however it was written.
    """

    start: int
    end: int
    kind: str
    value: str
    canonical: str = ""

    @property
    def key_value(self) -> str:
        return self.canonical or self.value


class Recognizer(ABC):
    """Finds one kind of PII.

    ``priority`` breaks ties between overlapping spans of equal length: the more specific
    recognizer (more structure checked) has the higher number.
    """

    kind: str = ""
    priority: ClassVar[int] = 0
    # A regex that fully matches every beginning of every value this recognizer finds (it may
    # match more). Streaming holds back only text that could be such a beginning; None (e.g. a
    # configured pattern) holds back a fixed window instead.
    partial: ClassVar[str | None] = None
    # A regex that every value this recognizer finds contains a match of (in the folded text the
    # engine searches); text without one holds no such value, so the engine skips the search.
    # None (e.g. a configured pattern): no such promise, the recognizer always runs.
    needs: ClassVar[str | None] = None

    @abstractmethod
    def find(self, text: str) -> Iterator[Span]:
        """Yield spans in any order; overlaps are resolved by the engine."""
