"""What the conformance suite runs against: the engine simulator or a real tritonserver.

Both serve the same two TensorRT-LLM-shaped models under the same names (the devtool
`services.devtools.pytriton_llm` names its models after the simulator's catalog).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from services.devtools.pytriton_llm import DECOUPLED_MODEL, PLAIN_MODEL, SPARE_MODEL


@dataclass(frozen=True)
class Backend:
    kind: str  # "simulator" | "real"
    address: str
    metrics_url: str
    decoupled: str = DECOUPLED_MODEL
    plain: str = PLAIN_MODEL
    spare: str = SPARE_MODEL  # for unload tests only


def bytes_tensor(*values: str) -> bytes:
    return b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values)


def infer_request(
    model: str,
    prompt: str = "hello there",
    max_tokens: int = 3,
    *,
    stream: bool | None = None,
    version: str = "",
    request_id: str = "conf-1",
    extra: dict[str, bool] | None = None,
    drop: tuple[str, ...] = (),
    empty_final: bool = False,
) -> pb.ModelInferRequest:
    """A TensorRT-LLM ensemble request with raw contents, as tritonclient sends it."""
    req = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    if empty_final:
        req.parameters["triton_enable_empty_final_response"].bool_param = True
    tensors: list[tuple[str, str, bytes]] = [
        ("text_input", "BYTES", bytes_tensor(prompt)),
        ("max_tokens", "INT32", np.array([[max_tokens]], dtype=np.int32).tobytes()),
    ]
    flags = dict(extra or {})
    if stream is not None:
        flags["stream"] = stream
    tensors += [(k, "BOOL", np.array([[v]], dtype=bool).tobytes()) for k, v in flags.items()]
    for name, dtype, raw in tensors:
        if name in drop:
            continue
        req.inputs.add(name=name, datatype=dtype, shape=[1, 1])
        req.raw_input_contents.append(raw)
    return req


def outputs(resp: pb.ModelInferResponse) -> dict[str, bytes]:
    return {o.name: resp.raw_output_contents[i] for i, o in enumerate(resp.outputs)}


def text(resp: pb.ModelInferResponse) -> str:
    raw = outputs(resp).get("text_output", b"")
    return raw[4:].decode() if raw else ""


def final(resp: pb.ModelInferResponse) -> bool | None:
    p = resp.parameters
    return p["triton_final_response"].bool_param if "triton_final_response" in p else None


async def stream_all(
    stub: pbg.GRPCInferenceServiceStub, *requests: pb.ModelInferRequest, until_finals: int | None = None
) -> list[pb.ModelStreamInferResponse]:
    """Sends the requests on one stream; reads until each got a final response or an error."""
    want = len(requests) if until_finals is None else until_finals

    async def source() -> AsyncIterator[pb.ModelInferRequest]:
        for r in requests:
            yield r
        await asyncio.sleep(30)  # keep the stream open while answers arrive

    got, done = [], 0
    call = stub.ModelStreamInfer(source(), timeout=60)
    async for resp in call:
        got.append(resp)
        if resp.error_message or final(resp.infer_response):
            done += 1
            if done >= want:
                break
    call.cancel()
    return got


async def scrape(url: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()

    return await asyncio.to_thread(get)


async def index_states(stub: pbg.GRPCInferenceServiceStub) -> dict[str, str]:
    index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    return {m.name: m.state for m in index.models}


async def eventually(check: Callable[[], object], timeout_s: float = 60.0) -> None:
    """Awaits `check()` (a coroutine function) until it returns truthy."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def rpc_error(coro) -> grpc.aio.AioRpcError:
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")
