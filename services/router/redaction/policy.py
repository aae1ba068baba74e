"""Redaction policy: which kinds to treat and how, from the registry's DataPolicy or a dict."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .pattern import PatternRecognizer, patterns_from_config


class Mode(enum.StrEnum):
    """What happens to a found value (registry ``MaskMode``; unspecified means MASK)."""

    MASK = "mask"  # typed placeholder: "[PHONE]"
    HASH = "hash"  # keyed hash: "[PHONE:hash:3f9a0c1d2b4e5f60]"
    DROP = "drop"  # removed


# MaskMode enum numbers in harness/registry/v1/registry.proto.
_PROTO_MODES = {0: Mode.MASK, 1: Mode.MASK, 2: Mode.HASH, 3: Mode.DROP}

# Policy kinds that stand for several recognizers ("ip" in the registry's PiiRule comment).
ALIASES: Mapping[str, tuple[str, ...]] = {"ip": ("ipv4", "ipv6")}


def parse_mode(mode: Mode | str | int | None) -> Mode:
    """Accept Mode, "mask"/"hash"/"drop", "MASK_MODE_HASH", a MaskMode number, or ""/None."""
    if isinstance(mode, Mode):
        return mode
    if mode is None or mode == "":
        return Mode.MASK
    if isinstance(mode, int):
        try:
            return _PROTO_MODES[mode]
        except KeyError:
            raise ValueError(f"unknown mask mode number {mode}") from None
    name = mode.strip().lower().removeprefix("mask_mode_")
    if name == "unspecified":
        return Mode.MASK
    try:
        return Mode(name)
    except ValueError:
        raise ValueError(f"unknown mask mode {mode!r} (mask, hash or drop)") from None


@dataclass(frozen=True)
class RedactionPolicy:
    """Kind -> mode, plus the configured pattern recognizers that policy kinds may name."""

    rules: Mapping[str, Mode]
    patterns: tuple[PatternRecognizer, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not self.rules

    @classmethod
    def build(cls, rules: Iterable[tuple[str, Any]], patterns: Any = None) -> RedactionPolicy:
        out: dict[str, Mode] = {}
        for kind, mode in rules:
            kind = kind.strip()
            if not kind:
                raise ValueError("every PII rule needs a kind")
            for k in ALIASES.get(kind, (kind,)):
                out[k] = parse_mode(mode)  # a later rule for the same kind wins
        return cls(out, to_patterns(patterns))


def to_patterns(patterns: Any) -> tuple[PatternRecognizer, ...]:
    """None, ``{name: regex}``, or a list mixing ``{"name", "regex"}`` and built recognizers."""
    if not patterns:
        return ()
    if isinstance(patterns, Mapping):
        return tuple(patterns_from_config(patterns))
    out: list[PatternRecognizer] = []
    for p in patterns:
        out += [p] if isinstance(p, PatternRecognizer) else patterns_from_config([p])
    return tuple(out)


def policy_from_proto(dp: Any, patterns: Any = None) -> RedactionPolicy:
    """From ``harness.registry.v1.DataPolicy`` (``agent.data_policy``).

    ``patterns`` is the router's configured patterns (``{name: regex}``, a list of
    ``{"name", "regex"}``, or built ``PatternRecognizer``s); a PiiRule kind may name one.
    """
    return RedactionPolicy.build(((r.kind, int(r.mode)) for r in dp.pii), patterns)


def policy_from_dict(d: Mapping[str, Any], patterns: Any = None) -> RedactionPolicy:
    """From plain data, either the DataPolicy shape or a flat map.

    ``{"pii": [{"kind": "phone", "mode": "hash"}], "patterns": {"emp_id": "EMP-[0-9]{6}"}}``
    or ``{"phone": "hash", "email": "mask"}``. ``patterns`` given here adds to the dict's own.
    """
    if "pii" in d or "patterns" in d:
        rules = [(r["kind"], r.get("mode")) for r in d.get("pii") or ()]
        own = to_patterns(d.get("patterns"))
    else:
        rules, own = list(d.items()), ()
    return RedactionPolicy.build(rules, own + to_patterns(patterns))
