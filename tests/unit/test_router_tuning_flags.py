"""The router's tuning flags: --event-linger (how long audit and usage events wait before a
batch ships) and --gc-young-threshold (allocations between young-generation collections)."""

from __future__ import annotations

import gc

import pytest

from services.router.__main__ import tune_gc
from services.router.config import parse_args

# flag, config field, default, (value given, value parsed)..., values refused, the range named
FLAGS = [
    ("--event-linger", "event_linger_s", 0.25, [("0", 0.0), ("1.5", 1.5)], ["-0.1", "61", "nan"], "use 0 to 60 seconds"),
    (
        "--gc-young-threshold", "gc_young_threshold", 20_000, [("0", 0), ("5000", 5000)], ["-1", "50", "2000000"],
        "use 0 (Python's default) or 100 to 1000000",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("flag", "field", "default", "given", "refused", "message"), FLAGS)
def test_the_default_the_flag_and_refusals_naming_the_range(
    flag, field, default, given, refused, message, capsys
):
    assert getattr(parse_args([]), field) == default
    for text, value in given:
        assert getattr(parse_args([flag, text]), field) == value
    for text in refused:
        with pytest.raises(SystemExit):
            parse_args([flag, text])
        assert message in capsys.readouterr().err


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
