"""Phone numbers (via phonenumbers) and e-mail addresses."""

from __future__ import annotations

import re
from collections.abc import Iterator

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

from .recognizers import NOT_BEFORE_ALNUM, Recognizer, Span

# Cheap candidate pass: an optional "+"/"(" then digits with common separators. phonenumbers
# then decides (its own PhoneNumberMatcher is several times slower per KB).
_CANDIDATE = re.compile(r"(?<![0-9A-Za-z+(])[(+]{0,2}[0-9][0-9 ()\-.]{5,22}[0-9]" + NOT_BEFORE_ALNUM)
_DIGITS = re.compile(r"[0-9]")
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_TOKEN = re.compile(r"[^ ]+")
_RUN_START = re.compile(r"[(+0].*|1[0-9]{2}|1[0-9]{10}")
# Digits grouped like a card (4-4-4-4, optional 1-3 tail): never split into phone numbers.
_CARD_SHAPE = re.compile(r"[0-9]{4}(?: [0-9]{4}){3}(?: [0-9]{1,3})?")


def _trim(start: int, raw: str) -> tuple[int, str]:
    """Drop a leading "(" that wraps the number ("(+86 138...)") rather than belongs to it."""
    while raw.startswith("(") and raw.count("(") > raw.count(")"):
        start, raw = start + 1, raw[1:]
    return start, raw


class Phone(Recognizer):
    """Phone numbers, China-first.

    Without a country code a number is read as Chinese (``default_region``) and accepted only
    when it is a valid CN number written as a mobile (11 digits starting with 1) or with the
    trunk prefix 0 (landline "010-12345678"): that rules out dates, amounts and order numbers
    that happen to be valid national numbers. With "+" or "00" any valid international number
    is accepted, and "86" then a mobile ("8613512349878") is read as +86. Canonical form: E.164.
    """

    kind = "phone"
    partial = r"[(+]{1,2}|[(+]{0,2}[0-9][0-9 ()\-.]*"
    needs = r"[0-9]"
    priority = 10

    def __init__(self, default_region: str = "CN") -> None:
        self.default_region = default_region

    def find(self, text: str) -> Iterator[Span]:
        for m in _CANDIDATE.finditer(text):
            start, raw = _trim(m.start(), m.group())
            e164 = self._accept(raw)
            if e164:
                yield Span(start, start + len(raw), self.kind, raw, e164)
            elif " " in raw and not _CARD_SHAPE.fullmatch(raw):
                yield from self._split(start, raw)

    def _split(self, start: int, raw: str) -> Iterator[Span]:
        """Numbers side by side ("13812345678 13987654321", "10.0.0.1 13812345678").

        Tries space-separated token runs, longest first from the left; a run must start like
        a number does ("+", "(", "0", or a mobile's "138"/"13812345678"), so the tail of a
        digit group ("... 1588 9820 493") is not read as a mobile. Cheaper than phonenumbers'
        PhoneNumberMatcher, which costs ~100 us per candidate.
        """
        toks = [t.span() for t in _TOKEN.finditer(raw)]
        i = 0
        while i < len(toks):
            first = raw[toks[i][0] : toks[i][1]]
            if not _RUN_START.fullmatch(first):
                i += 1
                continue
            for j in range(len(toks), i, -1):
                s, sub = _trim(start + toks[i][0], raw[toks[i][0] : toks[j - 1][1]])
                e164 = self._accept(sub)
                if e164:
                    yield Span(s, s + len(sub), self.kind, sub, e164)
                    i = j
                    break
            else:
                i += 1

    def _accept(self, raw: str) -> str | None:
        digits = "".join(_DIGITS.findall(raw))
        if not 7 <= len(digits) <= 17 or _DOTTED_QUAD.fullmatch(raw):
            return None  # too short/long, or an IPv4 address whose digits spell a mobile
        international = raw.lstrip("(").startswith("+") or digits.startswith("00")
        if not international and len(digits) == 13 and digits.startswith("861"):
            raw, international = "+" + digits, True  # a CN mobile with its country code, "+" left off
        if not international and not (digits.startswith("0") or (len(digits) == 11 and digits[0] == "1")):
            return None
        try:
            num = phonenumbers.parse(raw, self.default_region)
        except NumberParseException:
            return None
        if not phonenumbers.is_valid_number(num):
            return None
        return phonenumbers.format_number(num, PhoneNumberFormat.E164)


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    + rf"(?:{_LABEL}\.)+[A-Za-z]{{2,63}}"
    + r"(?![A-Za-z0-9-])"
)


class Email(Recognizer):
    """E-mail addresses with an ASCII local part and domain; canonical form is lower-case."""

    kind = "email"
    partial = r"[A-Za-z0-9][A-Za-z0-9._%+\-]*(?:@[A-Za-z0-9.\-]*)?"
    needs = "@"
    priority = 10

    def find(self, text: str) -> Iterator[Span]:
        if "@" not in text:  # hot path: most prompts have none
            return
        for m in _EMAIL.finditer(text):
            yield Span(m.start(), m.end(), self.kind, m.group(), m.group().lower())
