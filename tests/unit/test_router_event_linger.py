"""The router's --event-linger: how long audit and usage events wait before a batch ships."""

from __future__ import annotations

import pytest

from services.router.config import parse_args


def test_events_linger_a_quarter_second_by_default_and_the_flag_sets_it():
    assert parse_args([]).event_linger_s == 0.25
    assert parse_args(["--event-linger", "0"]).event_linger_s == 0.0
    assert parse_args(["--event-linger", "1.5"]).event_linger_s == 1.5


@pytest.mark.parametrize("value", ["-0.1", "61", "nan"])
def test_an_event_linger_outside_0_to_60_seconds_is_refused_with_the_range(value, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--event-linger", value])
    assert "use 0 to 60 seconds" in capsys.readouterr().err
