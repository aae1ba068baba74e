"""The GPU-time price in integers is the exact decimal rule: round_half_up(Fraction(str(s)) x
price / 3600), including values in exponent form and exact halves."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from services.common.pricing import gpu_time_cost, round_half_up
from services.router.budgets.prices import PriceTable


def _exact(seconds: float, price: int) -> int:
    return round_half_up(Fraction(str(seconds)) * price / 3600)


@pytest.mark.parametrize(
    ("seconds", "price", "micro_usd"),
    [
        (1.8, 1000, 1),  # exactly 0.5: half-up
        (5.4, 1000, 2),  # exactly 1.5
        (1.7999, 1000, 0),
        (1e-05, 3_600_000_000, 10),  # exponent form
        (3600.0, 2_500_000, 2_500_000),
    ],
)
def test_known_values(seconds: float, price: int, micro_usd: int):
    assert gpu_time_cost(seconds, price) == micro_usd == _exact(seconds, price)


def test_matches_the_fraction_rule_on_random_values():
    rng = random.Random(7)
    for _ in range(20_000):
        seconds = rng.random() * 10 ** rng.randint(-9, 5)
        price = rng.choice([1, 7, 1800, 2_500_000, 3_999_999, rng.randint(1, 10**9)])
        assert gpu_time_cost(seconds, price) == _exact(seconds, price), (seconds, price)


def test_the_router_prices_gpu_time_by_the_same_rule():
    table = PriceTable(gpu_hour={"H100": 3_999_999})
    assert table.gpu_cost("H100", 0.123456789) == _exact(0.123456789, 3_999_999)
    assert table.gpu_cost("H100", 0.0) == 0
    assert table.gpu_cost("A10", 5.0) == 0  # no price: 0, as the cost service charges it
