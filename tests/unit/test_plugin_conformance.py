"""Every plugin of every family keeps its family's contract: the scheduler's filters, scorers and
pickers, the PII recognizers and the advisor rules, each run from its registry's own list (a new
plugin added to a list is tested here without writing a test for it)."""

from __future__ import annotations

import random
import re

import pytest

from services.common.kv_blocks import BlockHasher, sim_token_ids
from services.common.kv_events_wire import BlockStored, EventBatch
from services.common.plugins import PluginRegistry
from services.cost.advisor import RULES, Facts, Fleet, Recommendation, RuleResult
from services.cost.advisor.registry import RULE
from services.router.redaction import RECOGNIZERS, Recognizer
from services.router.redaction.builtin import RECOGNIZER
from services.router.scheduling import REGISTRY, Candidate, Scheduler, SchedulerMemory, SchedulingRequest
from services.router.scheduling.registry import FILTER, PICKER, SCORER
from services.router.scheduling.types import Outcome
from tests.unit.test_advisor_rules import CATALOG, dep, facts, row

REQUEST = SchedulingRequest("llama", agent="a1", session_id="s1", prompt="the same long prefix " * 20)
CANDIDATES = [
    Candidate("a", waiting=3, active=2, kv_cache_fraction=0.9),
    Candidate("b", active=1, kv_cache_fraction=0.1),
    Candidate("c", waiting=0, active=0),
]


def plugins(registry: PluginRegistry, kind: str) -> list[str]:
    names = registry.names(kind)
    assert names, f"no {kind} is listed"
    return names


def test_the_registry_refuses_duplicates_and_unknown_kinds_and_names():
    def thing(base: int = 1) -> int:
        return base

    registry = PluginRegistry(("thing",), {"thing": {"a": thing}})
    assert registry.build("thing", "a", {"base": 2}) == 2
    with pytest.raises(ValueError, match="already registered"):
        registry.register("thing", "a")(thing)
    with pytest.raises(ValueError, match="plugin kind"):
        registry.register("other", "b")
    with pytest.raises(KeyError, match=r"known: a"):
        registry.get("thing", "nope")
    with pytest.raises(ValueError, match="unknown param"):
        registry.build("thing", "a", {"base": 2, "colour": "red"})


@pytest.mark.parametrize("name", plugins(REGISTRY, FILTER))
def test_filters_keep_a_subset_in_order_and_say_what_empty_means(name):
    memory = SchedulerMemory()
    plugin = REGISTRY.build(FILTER, name)
    kept = plugin.filter(REQUEST, CANDIDATES, memory)
    assert [c.name for c in kept] == [c.name for c in CANDIDATES if c in kept]
    assert plugin.empty_outcome in (Outcome.NO_READY, Outcome.SATURATED)
    assert plugin.filter(REQUEST, [], memory) == []


@pytest.mark.parametrize("name", plugins(REGISTRY, SCORER))
def test_scorers_give_one_score_in_0_1_per_candidate(name):
    scheduler = Scheduler(seed=1)
    plugin = REGISTRY.build(SCORER, name)
    for _ in range(2):  # again after the scheduler recorded where the request went
        scores = plugin.score(REQUEST, CANDIDATES, scheduler.memory)
        assert len(scores) == len(CANDIDATES) and all(0.0 <= s <= 1.0 for s in scores)
        scheduler.record(CANDIDATES[1], REQUEST)
    # ... and once an engine's KV events said it holds part of the request's prefix
    tokens = sim_token_ids(REQUEST.prompt)
    held = BlockHasher(16).digests(tokens)[:3]
    stored = BlockStored(tuple(held), None, tuple(tokens[: 3 * 16]), 16)
    scheduler.memory.engine_blocks.apply("c", "", EventBatch(0.0, (stored,)))
    scores = plugin.score(REQUEST, CANDIDATES, scheduler.memory)
    assert len(scores) == len(CANDIDATES) and all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize("name", plugins(REGISTRY, PICKER))
def test_pickers_choose_an_index_of_the_candidates(name):
    rng, memory = random.Random(7), SchedulerMemory()
    plugin = REGISTRY.build(PICKER, name)
    for totals in ([0.2, 0.9, 0.5], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]):
        assert 0 <= plugin.pick(CANDIDATES, totals, memory, rng) < len(CANDIDATES)
    assert plugin.pick(CANDIDATES[:1], [0.3], memory, rng) == 0


SAMPLES = {  # one value each built-in recognizer must find, beside Chinese text
    "cn_resident_id": "身份证110101199003074477号",
    "bank_card": "卡号6222021234567890128结束",
    "phone": "电话13812345678请回电",
    "email": "邮件 alice@example.com 谢谢",
    "ipv4": "来自10.1.2.3的请求",
    "ipv6": "来自 2001:db8::1 的请求",
}


@pytest.mark.parametrize("name", [n for n in plugins(RECOGNIZERS, RECOGNIZER) if n != "pattern"])
def test_recognizers_find_their_kind_and_report_exact_spans(name):
    recognizer = RECOGNIZERS.build(RECOGNIZER, name)
    assert isinstance(recognizer, Recognizer)
    assert name in SAMPLES, f"add a sample value for the {name!r} recognizer"
    text = SAMPLES[name]
    spans = list(recognizer.find(text))
    assert spans, f"{name} found nothing in {text!r}"
    for span in spans:
        assert text[span.start : span.end] == span.value and span.kind == name
        # The engine skips a recognizer on text without its `needs`: every value must have one.
        assert recognizer.needs is not None, f"{name}: say what its values always contain (needs)"
        assert re.search(recognizer.needs, span.value), f"{name}: {span.value!r} lacks {recognizer.needs!r}"
    assert list(recognizer.find("nothing to see here, 12 apples")) == []


def test_the_pattern_recognizer_needs_its_regex():
    pattern = RECOGNIZERS.build(RECOGNIZER, "pattern", {"kind": "ticket", "regex": r"TKT-[0-9]{4}"})
    [span] = pattern.find("see TKT-1234 now")
    assert (span.value, span.kind) == ("TKT-1234", "ticket")


@pytest.mark.parametrize("name", plugins(RULES, RULE))
def test_advisor_rules_answer_for_any_facts_with_positive_savings(name):
    rule = RULES.get(RULE, name)
    assert rule.name == name
    rich = facts(
        [row("a1", "d1"), row("a2", "d2"), row("a3", "d3", n=10, inp=5_000, out=500)],
        fleet=Fleet((dep("d1"), dep("d2"), dep("d3")), CATALOG),
    )
    for given in (facts(), rich):
        result = rule.advise(given)
        assert isinstance(result, RuleResult) and isinstance(given, Facts)
        for rec in result.recommendations:
            assert isinstance(rec, Recommendation) and rec.rule == name
            assert rec.monthly_saving_micro_usd >= 0 and rec.vram_saved_bytes >= 0 and rec.title
