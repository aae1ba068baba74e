"""Scheduling profiles: YAML building through the registry, selection, config errors."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import yaml

from services.router.scheduling import (
    BATCH,
    INTERACTIVE,
    REALTIME,
    SchedulingRequest,
    load_config,
    parse_config,
    scheduler_registry,
)
from services.router.scheduling.filters import NotSaturatedFilter

BASE = {
    "profiles": {
        "default": {
            "filters": ["model-ready", "healthy", {"type": "not-saturated", "params": {"max_waiting": 3}}],
            "scorers": [{"type": "prefix-cache", "weight": 3}, {"type": "queue-depth", "weight": 2}],
            "picker": "max-score",
        },
        "low-latency": {"filters": ["model-ready"], "scorers": ["latency"]},
        "prefix-heavy": {"scorers": [{"type": "prefix-cache", "weight": 5}]},
    },
    "selection": {
        "slo_class": {"realtime": "low-latency"},
        "agent_type": {"rag": "prefix-heavy"},
        "default": "default",
    },
}


def config_with(**changes):
    raw = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = raw
        *parents, last = path.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return raw


def test_profiles_are_built_from_yaml_through_the_registry():
    cfg = parse_config(BASE)
    default = cfg.profiles["default"]
    assert [name for name, _ in default.filters] == ["model-ready", "healthy", "not-saturated"]
    assert isinstance(default.filters[2][1], NotSaturatedFilter) and default.filters[2][1].max_waiting == 3
    assert [(s.name, s.weight) for s in default.scorers] == [("prefix-cache", 3.0), ("queue-depth", 2.0)]
    assert default.picker_name == "max-score"
    low = cfg.profiles["low-latency"]
    assert [(s.name, s.weight) for s in low.scorers] == [("latency", 1.0)]  # weight defaults to 1
    assert cfg.profiles["prefix-heavy"].picker_name == "max-score"  # picker defaults to max-score


def test_profile_selection_by_slo_class_and_agent_type():
    select = parse_config(BASE).selector.select
    assert select(SchedulingRequest("m", slo_class=REALTIME)) == "low-latency"
    assert select(SchedulingRequest("m", agent_type="rag")) == "prefix-heavy"
    assert select(SchedulingRequest("m", agent_type="chat", slo_class=BATCH)) == "default"
    # Both match: the SLO class comes first by default, precedence can swap it.
    both = SchedulingRequest("m", agent_type="rag", slo_class=REALTIME)
    assert select(both) == "low-latency"
    swapped = config_with(selection__precedence=["agent_type", "slo_class"])
    assert parse_config(swapped).selector.select(both) == "prefix-heavy"


def test_selection_defaults_to_the_profile_named_default():
    raw = config_with()
    del raw["selection"]
    assert parse_config(raw).selector.select(SchedulingRequest("m", slo_class=INTERACTIVE)) == "default"


def test_the_same_scorer_twice_needs_distinct_names():
    raw = config_with(profiles__default__scorers=["latency", "latency"])
    with pytest.raises(ValueError, match=r"profile 'default', scorer 'latency': duplicate name"):
        parse_config(raw)
    raw = config_with(
        profiles__default__scorers=["latency", {"type": "latency", "name": "latency-2", "weight": 2}]
    )
    assert [s.name for s in parse_config(raw).profiles["default"].scorers] == ["latency", "latency-2"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"profiles__default__scorers": ["no-such-scorer"]},
            r"profile 'default'.*unknown scorer 'no-such-scorer'",
        ),
        ({"profiles__default__filters": ["nope"]}, r"profile 'default'.*unknown filter 'nope'"),
        ({"profiles__default__picker": "best"}, r"profile 'default'.*unknown picker 'best'"),
        (
            {"profiles__default__scorers": [{"type": "queue-depth", "weight": -1}]},
            r"profile 'default', scorer 'queue-depth': weight must be a number >= 0",
        ),
        (
            {"profiles__default__scorers": [{"type": "queue-depth", "weight": "high"}]},
            r"profile 'default', scorer 'queue-depth': weight",
        ),
        (
            {"profiles__default__filters": [{"type": "not-saturated", "params": {"max_queue": 2}}]},
            r"profile 'default'.*not-saturated.*unknown param\(s\) \['max_queue'\]",
        ),
        (
            {"profiles__default__filters": [{"type": "not-saturated", "params": {"max_kv_fraction": 2}}]},
            r"profile 'default'.*not-saturated.*max_kv_fraction",
        ),
        (
            {"profiles__default__scorers": [{"type": "latency", "wieght": 2}]},
            r"profile 'default', scorer 'latency': unknown key\(s\) \['wieght'\]",
        ),
        ({"profiles__default__extra": 1}, r"profile 'default': unknown key"),
        (
            {"selection__slo_class": {"realtime": "missing"}},
            r"selection.slo_class.realtime: unknown profile 'missing'",
        ),
        ({"selection__slo_class": {"urgent": "default"}}, r"unknown SLO class"),
        ({"selection__default": "missing"}, r"selection.default: unknown profile"),
        ({"selection__precedence": ["slo_class", "slo_class"]}, r"selection.precedence"),
        ({"memory": {"prefix_block_tokens": 0}}, r"memory.prefix_block_tokens"),
        ({"memory": {"block": 64}}, r"memory: unknown key"),
        ({"profiles": {}}, r"'profiles' must be a non-empty mapping"),
        ({"routes": {}}, r"unknown key\(s\) \['routes'\]"),
    ],
)
def test_config_errors_name_the_profile_and_plugin(change, message):
    with pytest.raises(ValueError, match=message):
        parse_config(config_with(**change))


def test_custom_plugins_register_with_a_decorator():
    registry = scheduler_registry()

    @registry.register("scorer", "constant")
    @dataclass(frozen=True)
    class Constant:
        value: float = 0.5

        def score(self, request, candidates, memory):
            return [self.value] * len(candidates)

    raw = {"profiles": {"default": {"scorers": [{"type": "constant", "params": {"value": 0.25}}]}}}
    # A private registry knows only its own plugins (the picker here is missing from it).
    with pytest.raises(ValueError, match="unknown picker 'max-score'"):
        parse_config(raw, registry)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("scorer", "constant")(Constant)
    with pytest.raises(ValueError, match="plugin kind"):
        registry.register("ranker", "x")


def test_the_packaged_default_profiles_load():
    cfg = load_config()
    assert {"default", "low-latency", "prefix-heavy", "throughput", "round-robin", "least-request"} <= set(
        cfg.profiles
    )
    select = cfg.selector.select
    assert select(SchedulingRequest("m", slo_class=REALTIME)) == "low-latency"
    assert select(SchedulingRequest("m", slo_class=BATCH, agent_type="rag")) == "throughput"
    assert select(SchedulingRequest("m", agent_type="rag")) == "prefix-heavy"
    assert select(SchedulingRequest("m")) == "default"


def test_load_config_reads_a_file(tmp_path):
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert set(load_config(path).profiles) == {"default", "low-latency", "prefix-heavy"}
