"""The router's --gc-young-threshold: fewer young-generation garbage collections per call."""

from __future__ import annotations

import gc

import pytest

from services.router.__main__ import tune_gc
from services.router.config import parse_args


def test_the_threshold_is_20000_by_default_and_the_flag_sets_it():
    assert parse_args([]).gc_young_threshold == 20_000
    assert parse_args(["--gc-young-threshold", "0"]).gc_young_threshold == 0
    assert parse_args(["--gc-young-threshold", "5000"]).gc_young_threshold == 5000


@pytest.mark.parametrize("value", ["-1", "50", "2000000"])
def test_a_threshold_out_of_range_is_refused_with_the_range(value, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--gc-young-threshold", value])
    assert "use 0 (Python's default) or 100 to 1000000" in capsys.readouterr().err


def test_tune_gc_sets_the_young_generation_only_and_zero_keeps_pythons():
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc(20_000)
        assert gc.get_threshold() == (20_000, 10, 10)
        tune_gc(0)
        assert gc.get_threshold() == (20_000, 10, 10)
    finally:
        gc.set_threshold(*before)
