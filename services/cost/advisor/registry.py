"""Rule registry (the built-in rules, listed in rules/__init__.py); `run` applies them and ranks
the result."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.common.plugins import PluginRegistry
from services.cost.advisor.base import Facts, Recommendation, Rule
from services.cost.advisor.rules import BUILTIN_RULES

RULE = "rule"
RULES = PluginRegistry((RULE,), {RULE: {rule.name: rule for rule in BUILTIN_RULES}})
_RULES: dict[str, Rule] = {name: RULES.get(RULE, name) for name in RULES.names(RULE)}


def rules() -> dict[str, Rule]:
    """The rules by name, in the order they are listed."""
    return dict(_RULES)


@dataclass(frozen=True)
class Advice:
    recommendations: tuple[Recommendation, ...]
    notes: tuple[str, ...]


def check_names(names: Iterable[str]) -> list[str]:
    """The names without repeats; INVALID_ARGUMENT naming any unknown rule."""
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in _RULES]
    if unknown:
        raise InvalidArgument(f"unknown advisor rule(s) {unknown}; known: {', '.join(_RULES)}")
    return names


def run(facts: Facts, names: Iterable[str] = ()) -> Advice:
    """Applies the named rules (all when empty); largest saving first, then most VRAM freed.
    Notes: the fleet provider's (prefixed "fleet: "), then each rule's (prefixed with its name)."""
    names = check_names(names)
    recs: list[Recommendation] = []
    notes = [f"fleet: {n}" for n in facts.fleet_notes]  # first: they explain the rules' notes
    for name in names or _RULES:
        result = _RULES[name].advise(facts)
        recs.extend(result.recommendations)
        notes.extend(f"{name}: {n}" for n in result.notes)
    recs.sort(key=lambda r: (-r.monthly_saving_micro_usd, -r.vram_saved_bytes, r.rule, r.title))
    return Advice(tuple(recs), tuple(notes))
