"""Prometheus's text exposition format (0.0.4), read as samples exactly as written.

The pool reads every engine's /metrics page every probe interval. prometheus_client's parser
reads it a character at a time in Python and built half of the pool's CPU at rest; this reads
a line with a split and a regular expression per label. Sample names are as written: unlike
prometheus_client's parser, a counter whose samples lack `_total` (Triton's request counters)
is not renamed. Comments (# HELP, # TYPE) are skipped. Malformed input raises ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

Sample = tuple[str, dict[str, str], float]  # name, labels, value

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# One label: name="value" (the value's escapes are \\, \" and \n), then a comma, the end, or
# both (a trailing comma).
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,\s*\}|,|\})')
_NO_LABELS = re.compile(r"\s*\}")
_ESCAPE = re.compile(r"\\(.)")
_UNESCAPED = {"\\": "\\", '"': '"', "n": "\n"}


def samples(text: str) -> Iterator[Sample]:
    """Every sample line of `text` as (name, labels, value); a timestamp is read and dropped."""
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line[0] == "#":
            continue
        try:
            yield _sample(line)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}: {line[:200]!r}") from None


def _sample(line: str) -> Sample:
    brace = line.find("{")
    if brace < 0:
        name, _, rest = line.partition(" ")
        labels: dict[str, str] = {}
    else:
        name = line[:brace].rstrip()
        labels, end = _labels(line, brace + 1)
        rest = line[end:]
    if not _NAME.fullmatch(name):
        raise ValueError("not a metric name")
    fields = rest.split()
    if not 1 <= len(fields) <= 2:
        raise ValueError("a sample is a value and at most a timestamp")
    if len(fields) == 2:
        int(fields[1])  # milliseconds since the epoch
    return name, labels, float(fields[0])


def _labels(line: str, at: int) -> tuple[dict[str, str], int]:
    """The labels from just after `{`, and where the line goes on after the `}`."""
    labels: dict[str, str] = {}
    empty = _NO_LABELS.match(line, at)
    if empty is not None:
        return labels, empty.end()
    while True:
        match = _LABEL.match(line, at)
        if match is None:
            raise ValueError("malformed labels")
        name, value, sep = match.groups()
        labels[name] = _ESCAPE.sub(_unescape, value) if "\\" in value else value
        if sep.endswith("}"):
            return labels, match.end()
        at = match.end()


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    return _UNESCAPED.get(char, "\\" + char)
