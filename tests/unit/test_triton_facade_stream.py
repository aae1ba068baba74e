"""The front door's streaming: Triton's decoupled-model responses (the last one carries the
final flag) without holding the first delta back, and a bounded hold for the others."""

from __future__ import annotations

import asyncio
import time

from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor

from services.router.call import Call, Chunk, GenerationInput
from services.router.triton_facade import TritonFacadeServicer


class ScriptedRouter:
    """`run` yields (pause before, text, producer knows it is the last) steps as chunks, then an
    empty final chunk when no step was the last (as the pipeline does when the engine's final
    response carries no text)."""

    def __init__(self, steps: list[tuple[float, str, bool]], tail_s: float = 0.0) -> None:
        self.steps, self.tail_s, self.finished = steps, tail_s, False

    async def run(self, call: Call):
        ended = False
        for pause, text, last in self.steps:
            await asyncio.sleep(pause)
            call.text_parts.append(text)
            ended = last
            yield Chunk(text, last)
        await asyncio.sleep(self.tail_s)  # the engine's end (its empty final response) comes later
        if not ended:
            yield Chunk("", True)
        self.finished = True


async def run(router: ScriptedRouter, empty_final: bool = False) -> list[tuple[float, str, bool]]:
    """(ms since start, text or None when absent, final) per emitted response."""
    request = pb.ModelInferRequest(model_name="m", id="r1")
    out: list[tuple[float, str, bool]] = []
    start = time.perf_counter()

    def emit(resp: pb.ModelStreamInferResponse) -> None:
        r = resp.infer_response
        text = (
            deserialize_bytes_tensor(r.raw_output_contents[0])[0].decode() if r.raw_output_contents else None
        )
        out.append(
            ((time.perf_counter() - start) * 1000, text, r.parameters["triton_final_response"].bool_param)
        )

    facade = TritonFacadeServicer(router)  # type: ignore[arg-type]
    await facade._stream(request, Call(GenerationInput()), {"text_output"}, empty_final, emit)
    assert router.finished  # drained: the router records the call as finished, not cancelled
    return out


# The gaps between steps (0.2-0.3 s) dwarf the 1 ms hold, so that a loaded machine's pauses of
# a few ms cannot make a delta sent on time look held, while one held for the next step would
# still be 0.2 s late.
async def test_the_first_delta_goes_out_at_once_and_the_last_carries_the_final_flag():
    router = ScriptedRouter([(0.0, "a", False), (0.2, " b", False), (0.2, " c", False)])
    out = await run(router)
    assert [(t, f) for _, t, f in out] == [("a", False), (" b", False), (" c", True)]
    assert out[0][0] < 100  # not held for the next delta (200 ms later)
    assert out[1][0] < out[2][0] - 100  # " b" waited at most ~HOLD_S, not for " c" (200 ms later)


async def test_a_slow_end_releases_the_held_delta_and_sends_an_empty_final():
    router = ScriptedRouter([(0.0, "a", False), (0.01, " b", False)], tail_s=0.3)
    out = await run(router)
    assert [(t, f) for _, t, f in out] == [("a", False), (" b", False), ("", True)]
    assert out[1][0] < out[2][0] - 150  # " b" did not wait for the end (300 ms later)


async def test_a_known_last_delta_is_final_without_waiting():
    router = ScriptedRouter([(0.0, "whole cached answer", True)], tail_s=0.3)
    out = await run(router)
    assert [(t, f) for _, t, f in out] == [("whole cached answer", True)]
    assert out[0][0] < 150  # not held for the end (300 ms later)


async def test_empty_final_requested():
    out = await run(ScriptedRouter([(0.0, "a", False), (0.0, " b", True)]), empty_final=True)
    assert [(t, f) for _, t, f in out] == [("a", False), (" b", False), (None, True)]


async def test_no_text_at_all_still_ends_with_a_final_response():
    out = await run(ScriptedRouter([]))
    assert [(t, f) for _, t, f in out] == [("", True)]


async def test_deltas_in_a_burst_each_go_out_once_in_order_and_the_last_before_the_end():
    # One hold timer serves the stream: armed for " b", it finds " d" held instead and waits
    # out d's own hold; nothing is sent twice, dropped or reordered.
    steps = [(0.0, "a", False), (0.0, " b", False), (0.0, " c", False), (0.0005, " d", False)]
    out = await run(ScriptedRouter(steps, tail_s=0.03))
    assert [(t, f) for _, t, f in out] == [
        ("a", False),
        (" b", False),
        (" c", False),
        (" d", False),
        ("", True),
    ]
