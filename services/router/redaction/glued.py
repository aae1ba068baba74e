"""Values glued into longer digit runs: "11010519491231002X13812345678" (a resident ID, then a
phone number), "000062220212345678901230" (a card inside an order number).

The recognizers need a boundary on each side of a value, so such runs hide what they carry.
In every run of 20 or more digits (longer than any single value), this pass looks for resident
IDs (checksum, birth date and province: a strong check), then cards (16-19 digits from an
issuer digit 2-6, Luhn; a weak check, so a long random number may lose a window of digits:
for a governance product, a masked order number is the better error), and gives what is left
between them back to the recognizers as text of its own. Linear in the run: Luhn sums over
windows come from prefix sums.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from .checksummed import is_valid_cn_resident_id
from .recognizers import Recognizer, Span

_RUN = re.compile(r"[0-9Xx]{20,}")
_ID = re.compile(r"[1-9][0-9]{16}[0-9Xx]")
_CARD_LENGTHS = (19, 18, 17, 16)
MIN_DIGITS = 20


def glued_spans(text: str, recognizers: Mapping[str, Recognizer]) -> list[Span]:
    if not ("cn_resident_id" in recognizers or "bank_card" in recognizers):
        return []
    out: list[Span] = []
    for m in _RUN.finditer(text):
        run = m.group()
        if len(run) - run.count("x") - run.count("X") >= MIN_DIGITS:
            out.extend(_split(run, m.start(), recognizers))
    return out


def _split(run: str, base: int, recognizers: Mapping[str, Recognizer]) -> list[Span]:
    taken: list[Span] = []
    if "cn_resident_id" in recognizers:
        taken += _ids(run, base)
    if "bank_card" in recognizers:
        for start, end in _gaps(taken, base, base + len(run)):
            for piece in re.finditer(r"[0-9]{16,}", run[start - base : end - base]):
                taken += _cards(piece.group(), start + piece.start())
    if not taken:
        return []
    taken.sort(key=lambda s: s.start)
    for start, end in _gaps(taken, base, base + len(run)):  # the rest, as text of its own
        if end - start >= 7:
            piece = run[start - base : end - base]
            for rec in recognizers.values():
                taken += [
                    Span(s.start + start, s.end + start, s.kind, s.value, s.canonical)
                    for s in rec.find(piece)
                ]
    return taken


def _gaps(taken: list[Span], start: int, end: int) -> Iterator[tuple[int, int]]:
    pos = start
    for s in sorted(taken, key=lambda s: s.start):
        if s.start > pos:
            yield pos, s.start
        pos = max(pos, s.end)
    if end > pos:
        yield pos, end


def _ids(run: str, base: int) -> list[Span]:
    found, i = [], 0
    while i + 18 <= len(run):
        value = run[i : i + 18]
        if _ID.fullmatch(value) and is_valid_cn_resident_id(value):
            found.append(Span(base + i, base + i + 18, "cn_resident_id", value, value.upper()))
            i += 18
        else:
            i += 1
    return found


def _cards(digits: str, base: int) -> list[Span]:
    """Luhn-valid 16-19 digit windows from an issuer digit 2-6, longest first, left to right."""
    plain = [[0], [0]]  # prefix sums of digits at even / odd positions
    doubled = [[0], [0]]  # ... of their Luhn doubles
    for k, ch in enumerate(digits):
        d = ord(ch) - 48
        for parity in (0, 1):
            own = parity == k % 2
            plain[parity].append(plain[parity][-1] + (d if own else 0))
            doubled[parity].append(doubled[parity][-1] + ((2 * d - 9 if d > 4 else 2 * d) if own else 0))
    found, i = [], 0
    while i + 16 <= len(digits):
        if digits[i] in "23456":
            for length in _CARD_LENGTHS:
                j = i + length
                if j > len(digits):
                    continue
                last = (j - 1) % 2  # the check digit's parity: those digits count plain
                total = plain[last][j] - plain[last][i] + doubled[1 - last][j] - doubled[1 - last][i]
                if total % 10 == 0:
                    value = digits[i:j]
                    found.append(Span(base + i, base + j, "bank_card", value, value))
                    i = j
                    break
            else:
                i += 1
            continue
        i += 1
    return found
