"""Checksummed numbers: Chinese resident identity number and bank card number."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

from stdnum import luhn
from stdnum.cn import ric

from .recognizers import NOT_AFTER_ALNUM, NOT_BEFORE_ALNUM, Recognizer, Span

_CN_ID = re.compile(NOT_AFTER_ALNUM + r"[1-9][0-9]{16}[0-9Xx]" + NOT_BEFORE_ALNUM)


class CnResidentId(Recognizer):
    """18-character resident identity number (GB 11643-1999).

    Valid when the MOD 11-2 check character (0-9 or X) matches, the birth date is a real date
    not in the future and not before 1900, and the first two digits are a province code.
    Lower-case ``x`` is accepted; the canonical form is upper-case.

    Not stdnum's ``ric.is_valid``: it also requires the 6-digit county code to have existed
    in the birth year, but the code is where the ID was issued (often years later), so real
    IDs of people born before their district was created would be missed.
    """

    kind = "cn_resident_id"
    partial = r"[1-9][0-9]*[Xx]?"
    needs = r"[0-9]"
    priority = 30  # more structure checked than a Luhn card of the same length

    def find(self, text: str) -> Iterator[Span]:
        for m in _CN_ID.finditer(text):
            value = m.group()
            if is_valid_cn_resident_id(value):
                yield Span(m.start(), m.end(), self.kind, value, value.upper())


# GB/T 2260 provinces, plus 81/82/83 (Hong Kong, Macau, Taiwan residence permits).
_PROVINCES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65 "
    "71 81 82 83".split()
)


def is_valid_cn_resident_id(value: str) -> bool:
    value = value.upper()
    if len(value) != 18 or value[:2] not in _PROVINCES or ric.calc_check_digit(value) != value[17]:
        return False
    try:
        born = dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:  # 13th month, 30 February...
        return False
    return dt.date(1900, 1, 1) <= born <= dt.date.today()


# Contiguous 16-19 digits, or printed in groups of four ("6222 0212 3456 7890 123").
_CARD = re.compile(
    NOT_AFTER_ALNUM
    + r"(?:[2-6][0-9]{15,18}|[2-6][0-9]{3}(?P<sep>[ -])[0-9]{4}(?:(?P=sep)[0-9]{4}){2}(?:(?P=sep)[0-9]{1,3})?)"
    + NOT_BEFORE_ALNUM
)


class BankCard(Recognizer):
    """Payment card number: 16-19 digits, Luhn check, issuer digit 2-6.

    The first digit is the ISO/IEC 7812 major industry identifier; 2-6 are banking and
    financial issuers (Mastercard 2/5, Visa 4, JCB 35, Discover 6, UnionPay 62 incl. its
    19-digit cards). Restricting it keeps random Luhn-valid order numbers (1 in 10 of them
    pass Luhn) starting with 1, 7, 8, 9 out. Numbers failing Luhn are never flagged, including
    62-prefixed ones.
    """

    kind = "bank_card"
    partial = r"[2-6][0-9 \-]*"
    needs = r"[0-9]"
    priority = 20

    def find(self, text: str) -> Iterator[Span]:
        for m in _CARD.finditer(text):
            value = m.group()
            digits = value.replace(" ", "").replace("-", "")
            if 16 <= len(digits) <= 19 and luhn.is_valid(digits):
                yield Span(m.start(), m.end(), self.kind, value, digits)
