"""Usage events, prices and times for tests of the cost store and what reads it."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2

from services.common.pricing import usd_to_micro
from services.cost.store import CostStore

K = cost_pb2


def us(dt: str) -> int:
    d = datetime.fromisoformat(dt.replace("Z", "+00:00"))
    return int(d.timestamp()) * 1_000_000 + d.microsecond


def ts(dt: str) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromJsonString(dt)
    return t


def usage(
    event_id: str,
    at: str,
    *,
    model="llama-3-8b",
    inp=0,
    out=0,
    gpu=0.0,
    tool="",
    cached=False,
    user="alice",
    team="fin",
    project="ledger",
    agent="ledger-bot",
    gpu_type="H100-80GB",
    version="v1",
):
    return common_pb2.UsageEvent(
        event_id=event_id, time=ts(at), model=model, deployment=f"{model}@sim-0" if model else "",
        gpu_type=gpu_type, tool=tool, cached=cached,
        actor=common_pb2.Actor(user=user, team=team, project=project, agent=agent, agent_version=version),
        usage=common_pb2.Usage(input_tokens=inp, output_tokens=out, gpu_seconds=gpu),
    )  # fmt: skip


async def demo_prices(store: CostStore, effective: str = "2024-01-01T00:00:00Z") -> None:
    for kind, subject, usd in [
        (K.PRICE_KIND_MODEL_INPUT_TOKENS, "llama-3-8b", 0.20),
        (K.PRICE_KIND_MODEL_OUTPUT_TOKENS, "llama-3-8b", 0.60),
        (K.PRICE_KIND_GPU_HOUR, "H100-80GB", 2.50),
        (K.PRICE_KIND_TOOL_CALL, "ledger", 0.001),
    ]:
        price = K.Price(kind=kind, subject=subject, micro_usd=usd_to_micro(usd), effective_time=ts(effective))
        await store.set_price(price)
