"""Text as the recognizers see it: full-width and other Unicode digits folded to ASCII, exotic
spaces to " ", invisible characters (zero-width, bidi marks, soft hyphen, BOM) removed.

"１３８ 1234\u200b5678" is a phone number to a reader, so it must be one to the recognizers.
Only matching uses the folded text: spans are mapped back to the original, and whatever is not
redacted is released exactly as it came. Folding is a per-character map (NFKC for the
characters that matter here), so positions map back with a sorted list of removals. Text with
none of these characters (most of it) is returned as is after one regex scan.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass

from .recognizers import Span

# What normalize() folds: full-width digits, letters and the symbols values are written with
# (+ - . @ ( )); Unicode spaces; invisible format characters; the decimal digits of the common
# other scripts (Arabic-Indic, Devanagari, Bengali, Thai, Myanmar, Khmer, Mongolian) and the
# mathematical digits. Full-width CJK punctuation (，。：) is left alone: it separates, and
# folding it would slow ordinary text. One character class: a scan runs at C speed.
FOLDED = re.compile(
    "[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\uff0b\uff0d\uff0e\uff20\uff08\uff09"
    "\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    "\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
    "\u0660-\u0669\u06f0-\u06f9\u0966-\u096f\u09e6-\u09ef\u0e50-\u0e59\u1040-\u1049"
    "\u17e0-\u17e9\u1810-\u1819\U0001d7ce-\U0001d7ff]"
)
_SPACES = frozenset("\u00a0\u1680\u2028\u2029\u202f\u205f\u3000") | {chr(c) for c in range(0x2000, 0x200B)}


def _fold(ch: str) -> str:
    if ch in _SPACES:
        return " "
    if "\uff01" <= ch <= "\uff5e" or ch >= "\U0001d7ce":
        return unicodedata.normalize("NFKC", ch)
    digit = unicodedata.decimal(ch, None)
    return str(digit) if digit is not None else ""  # invisible: removed


@dataclass(frozen=True, slots=True)
class Normalized:
    text: str
    cuts: tuple[int, ...] = ()  # positions in `text` where removed characters stood, sorted
    changed: bool = False

    def start(self, pos: int) -> int:
        """Original position of a span starting at `pos` (removed characters before it skipped)."""
        return pos + bisect.bisect_right(self.cuts, pos)

    def end(self, pos: int) -> int:
        """Original position of a span ending at `pos` (removed characters inside it included)."""
        return pos + bisect.bisect_left(self.cuts, pos)

    def to_original(self, spans: list[Span], original: str) -> list[Span]:
        out = []
        for s in spans:
            start, end = self.start(s.start), self.end(s.end)
            out.append(Span(start, end, s.kind, original[start:end], s.canonical or s.value))
        return out


def folded_count(text: str) -> int:
    """How many characters normalize() would fold (a measure of the work it means)."""
    return 0 if text.isascii() else len(FOLDED.findall(text))


def normalize(text: str) -> Normalized:
    if text.isascii() or FOLDED.search(text) is None:
        return Normalized(text)
    parts: list[str] = []
    cuts: list[int] = []
    pos = removed = 0
    for m in FOLDED.finditer(text):
        parts.append(text[pos : m.start()])
        folded = _fold(m.group())
        if not folded:
            cuts.append(m.start() - removed)
            removed += 1
        parts.append(folded)
        pos = m.end()
    parts.append(text[pos:])
    return Normalized("".join(parts), tuple(cuts), True)
