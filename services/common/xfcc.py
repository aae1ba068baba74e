"""Envoy's ``x-forwarded-client-cert`` (XFCC) header, parsed by its grammar, and agent names.

Grammar (Envoy's HTTP header docs): the value is a ``,``-separated list of elements, one per
proxy hop; an element is a ``;``-separated list of ``key=value`` pairs; keys are
case-insensitive; a value holding ``,``, ``;`` or ``=`` should be double-quoted, with ``\\"``
for a quote inside. Envoy quotes Subject, Cert and Chain but writes URI SANs *bare*, so a
certificate whose SAN contains ``,`` or ``;`` makes its own text look like a second hop or a
second URI. The parser therefore only splits the header; deciding who the agent is stays strict
(exactly one hop, exactly one agent URI, a name of the agent syntax), and certificates with
such names are never issued (services/devtools/certs.py) nor admitted (Envoy's SAN regex).
"""

from __future__ import annotations

import functools
import re

# Agent (and service) names: DNS-label style, the registry's name rule for agents.
NAME_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(NAME_PATTERN)
MAX_XFCC_BYTES = 16 * 1024  # no Cert/Chain is forwarded: one element is a few hundred bytes
MAX_ELEMENTS = 8
MAX_PAIRS = 64
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


class XfccError(ValueError):
    """The header does not follow the XFCC grammar, or does not name exactly one agent."""


def is_valid_name(name: str) -> bool:
    """True when `name` may appear in ``spiffe://<td>/agent/<name>`` (or ``/service/<name>``)."""
    return _NAME.fullmatch(name) is not None


def parse_xfcc(header: str) -> list[list[tuple[str, str]]]:
    """One list of (key, value) pairs per element, in header order; keys keep their spelling.

    Keys may repeat within an element (URI, DNS, By). Raises XfccError on anything outside the
    grammar: an unterminated quote, a quote inside a bare value, a pair without '=', an empty
    element, a bad key, or a header over the size/count bounds.
    """
    if len(header) > MAX_XFCC_BYTES:
        raise XfccError(f"header is {len(header)} bytes; at most {MAX_XFCC_BYTES}")
    elements: list[list[tuple[str, str]]] = []
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(header)
    while True:
        key, i = _read_key(header, i)
        value, i = _read_value(header, i)
        pairs.append((key, value))
        if len(pairs) > MAX_PAIRS:
            raise XfccError(f"an element has more than {MAX_PAIRS} pairs")
        if i >= n:
            elements.append(pairs)
            return elements
        if header[i] == ",":
            elements.append(pairs)
            pairs = []
            if len(elements) >= MAX_ELEMENTS:
                raise XfccError(f"more than {MAX_ELEMENTS} elements")
        i += 1  # past ';' or ','


def _read_key(header: str, i: int) -> tuple[str, int]:
    eq = header.find("=", i)
    if eq < 0:
        raise XfccError(f"expected key=value at offset {i}")
    key = header[i:eq].strip(" \t")
    if not _KEY.fullmatch(key):
        raise XfccError(f"bad key {key[:40]!r} at offset {i}")
    return key, eq + 1


def _read_value(header: str, i: int) -> tuple[str, int]:
    """The value starting at `i` and the offset of the separator after it (or the end)."""
    n = len(header)
    while i < n and header[i] in " \t":
        i += 1
    if i < n and header[i] == '"':
        out: list[str] = []
        i += 1
        while i < n and header[i] != '"':
            if header[i] == "\\" and i + 1 < n:
                i += 1
            out.append(header[i])
            i += 1
        if i >= n:
            raise XfccError("unterminated quoted value")
        i += 1
        while i < n and header[i] in " \t":
            i += 1
        if i < n and header[i] not in ";,":
            raise XfccError(f"text after a quoted value at offset {i}")
        return "".join(out), i
    end = i
    while end < n and header[end] not in ";,":
        if header[end] == '"':
            raise XfccError(f"quote inside an unquoted value at offset {end}")
        end += 1
    return header[i:end].strip(" \t"), end


def values(element: list[tuple[str, str]], key: str) -> list[str]:
    """Every value of `key` (case-insensitive) in one element."""
    want = key.lower()
    return [v for k, v in element if k.lower() == want]


# A pure function of its inputs, and an agent's connection sends the same header on every
# request: parsing it once per distinct header saves the grammar walk on the hot path. Headers
# that raise are not cached (each is refused again). 256 x 16 KiB bounds the memory.
@functools.lru_cache(maxsize=256)
def agent_from_xfcc(header: str, agent_prefix: str) -> str:
    """The one agent SPIFFE id the header names, or "" when it names no agent URI at all.

    Behind Envoy with SANITIZE_SET the header holds exactly one element, the client Envoy saw.
    More elements, or more than one URI with the agent prefix, mean a certificate whose SAN
    text forges structure: refused (XfccError), never resolved to either name.
    """
    elements = parse_xfcc(header)
    if len(elements) != 1:
        raise XfccError(
            f"{len(elements)} elements; the proxy sets exactly one (a certificate SAN containing ',' "
            "reads as a second hop)"
        )
    _check_order(elements[0])
    agent_uris = [u for u in values(elements[0], "URI") if u.startswith(agent_prefix)]
    if not agent_uris:
        return ""
    if len(agent_uris) > 1:
        raise XfccError(f"{len(agent_uris)} agent URI SANs; an agent certificate carries exactly one")
    name = agent_uris[0][len(agent_prefix) :]
    if not is_valid_name(name):
        raise XfccError(
            f"agent name {name[:80]!r} is not a valid agent name (lowercase letters, digits and "
            "dashes, 1-63 characters)"
        )
    return agent_uris[0]


def _check_order(element: list[tuple[str, str]]) -> None:
    """Envoy writes By, Hash, Cert, Chain, Subject, then the URIs (the Harness's Envoy forwards
    uri and subject, no DNS): any other pair after a URI was spelled by the SAN itself."""
    seen_uri = False
    for key, _ in element:
        is_uri = key.lower() == "uri"
        if seen_uri and not is_uri:
            raise XfccError(f"a {key!r} pair follows the URI SAN; a certificate SAN forged it")
        seen_uri |= is_uri
    for key in ("Hash", "Cert", "Chain", "Subject"):
        if len(values(element, key)) > 1:
            raise XfccError(f"{key} appears more than once in one element")
