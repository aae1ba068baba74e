"""IPv4 and IPv6 addresses."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from .recognizers import Recognizer, Span

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
# Not part of a longer dotted run ("1.2.3.4.5" is a version, not an address).
_IPV4 = re.compile(rf"(?<![0-9A-Za-z.])(?:{_OCTET}\.){{3}}{_OCTET}(?![0-9A-Za-z]|\.[0-9])")


class IPv4(Recognizer):
    kind = "ipv4"
    partial = r"[0-9][0-9.]*"
    needs = r"[0-9]"
    priority = 15  # a dotted quad beats a phone reading of the same digits

    def find(self, text: str) -> Iterator[Span]:
        if "." not in text:
            return
        for m in _IPV4.finditer(text):
            yield Span(m.start(), m.end(), self.kind, m.group())


# Candidate: 2-7 "hextet:" groups then a dotted IPv4 tail or a hextet (in that order, so
# "::ffff:10.1.2.3" is not cut at "::ffff:10"); ipaddress validates. A ":" before the
# candidate is allowed because "信息:::1" (label colon, then "::1") is common, but not one
# after a hextet ("1:2:3:4:5:6:7:8:9" is no address, nor is its tail).
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z.])(?<![0-9A-Za-z.]:)(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?![0-9A-Za-z:]|\.[0-9])"
)
_HEX = re.compile(r"[0-9A-Fa-f]")


class IPv6(Recognizer):
    """IPv6 addresses, incl. "::" compression and IPv4-mapped tails; canonical is compressed."""

    kind = "ipv6"
    partial = r"[0-9A-Fa-f:][0-9A-Fa-f:.]*"
    needs = ":"
    priority = 10

    def find(self, text: str) -> Iterator[Span]:
        if "::" not in text and text.count(":") < 7:
            return
        for m in _IPV6.finditer(text):
            start, raw = m.start(), m.group()
            if (raw.startswith(":") and not raw.startswith("::")) or raw.startswith(":::"):
                start, raw = start + 1, raw[1:]  # a label's colon glued to the address
            if not _HEX.search(raw):  # a bare "::" in prose is not an address
                continue
            try:
                addr = ipaddress.IPv6Address(raw)
            except ValueError:
                continue
            yield Span(start, m.end(), self.kind, raw, addr.compressed)
