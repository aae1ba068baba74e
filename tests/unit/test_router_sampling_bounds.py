"""The router's Validate stage bounds sampling and conversation sizes (every front door's calls
pass it): NaN and infinities, oversized stop lists, absurd token counts."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.router.call import GenerationInput
from services.router.stages.admit import check_sampling_bounds

BAD = [
    (GenerationInput(prompt="p", temperature=float("nan")), "temperature"),
    (GenerationInput(prompt="p", temperature=float("inf")), "temperature"),
    (GenerationInput(prompt="p", max_tokens=2**31 - 1), "max_tokens"),
    (GenerationInput(prompt="p", top_k=2**31 - 1), "top_k"),
    (GenerationInput(prompt="p", stop=("x",) * 17), "stop"),
    (GenerationInput(prompt="p", stop=("x" * 257,)), "stop entry"),
    (GenerationInput(messages=(("user", "hi"),) * 1001), "messages"),
]


@pytest.mark.parametrize(("inp", "field"), BAD, ids=[f for _, f in BAD])
def test_out_of_bounds_sampling_is_invalid_argument(inp, field):
    with pytest.raises(InvalidArgument, match=field):
        check_sampling_bounds(inp)


def test_ordinary_sampling_passes():
    check_sampling_bounds(
        GenerationInput(prompt="p", max_tokens=256, temperature=0.7, top_k=40, stop=("\n",))
    )
