"""gRPC servicers of the router: thin conversion between protos and the core."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import grpc
from google.protobuf import json_format
from harness.common.v1 import common_pb2
from harness.router.v1 import router_pb2, router_pb2_grpc

from services.common import context as reqctx
from services.common.errors import Unimplemented
from services.common.limits import check_struct, duration_seconds
from services.router import chunk_interval
from services.router.core import Call, EmbeddingInput, GenerationInput, Router
from services.router.tools import MAX_APPROVAL_WAIT_S, MAX_TOOL_ARGUMENTS_BYTES, ToolCall, ToolInvoker


def to_input(req: router_pb2.GenerateRequest | router_pb2.CompleteRequest) -> GenerationInput:
    s = req.sampling
    return GenerationInput(
        prompt=req.prompt,
        messages=tuple((m.role, m.content) for m in req.messages),
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        model=req.model,
        bypass_cache=req.bypass_cache,
    )


def adopt_lineage(session_id: str, step_id: str) -> None:
    """The request's session and step ids, where set, replace the x-harness-session-id /
    x-harness-step-id headers' for this call (audit and usage lineage, session affinity): the
    contract offers both, and a client that fills the fields must not lose them."""
    reqctx.check_lineage_id("session_id", session_id)  # the headers' rule
    reqctx.check_lineage_id("step_id", step_id)
    if session_id or step_id:
        ctx = reqctx.current()
        lineage = {"session_id": session_id or ctx.session_id, "step_id": step_id or ctx.step_id}
        reqctx.set_current(dataclasses.replace(ctx, **lineage))  # the interceptor resets it after the call


def to_summary(r: Call) -> router_pb2.GenerationSummary:
    return router_pb2.GenerationSummary(
        request_id=r.request_id,
        agent_version=r.agent_version,
        model=r.model,
        deployment=r.deployment,
        finish_reason=r.finish_reason,
        usage=common_pb2.Usage(
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            gpu_seconds=r.charged_gpu_s,
            estimated=r.usage_estimated,
        ),
        timing=common_pb2.Timing(ttft_ms=r.ttft_ms, tbt_ms=r.tbt_ms, e2e_ms=r.e2e_ms),
        cached=bool(r.cached),
        cost_micro_usd=r.cost_micro_usd,
        trace_id=r.trace_id,
    )


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, router: Router, tools: ToolInvoker | None) -> None:
        self._router = router
        self._tools = tools  # None: a router that serves models only

    async def InvokeTool(
        self, request: router_pb2.InvokeToolRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.InvokeToolResponse:
        """Calls a catalog tool's action for the calling agent: policy, approval, cache, audit."""
        if self._tools is None:
            raise Unimplemented("this router serves no tools: InvokeTool is not available here")
        check_struct("arguments", request.arguments, max_bytes=MAX_TOOL_ARGUMENTS_BYTES)
        adopt_lineage(request.session_id, request.step_id)
        call = ToolCall(
            tool=request.tool,
            action=request.action,
            arguments=json_format.MessageToDict(request.arguments),
            version=request.version,
            idempotency_key=request.idempotency_key,
            approval_wait_s=duration_seconds("approval_wait", request.approval_wait, MAX_APPROVAL_WAIT_S),
        )
        outcome = await self._tools.invoke(call)
        resp = router_pb2.InvokeToolResponse(
            decision=outcome.decision,
            approval_id=outcome.approval_id,
            cached=outcome.cached,
            request_id=outcome.request_id,
        )
        if outcome.result is not None:
            resp.result.update(outcome.result)
        resp.duration.FromNanoseconds(int(outcome.duration_s * 1e9))
        return resp

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        """Streams text deltas for the calling agent; the last message carries the summary."""
        adopt_lineage(request.session_id, request.step_id)
        interval_ms = chunk_interval.interval_ms(context.invocation_metadata())
        inp = dataclasses.replace(
            to_input(request), timeout_s=context.time_remaining(), min_chunk_interval_ms=interval_ms
        )
        call = Call(inp)
        async for chunk in self._router.run(call):
            if chunk.text:
                yield router_pb2.GenerateResponse(text_delta=chunk.text)
        yield router_pb2.GenerateResponse(final=True, summary=to_summary(call))

    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CompleteResponse:
        """Runs a whole generation and answers once."""
        adopt_lineage(request.session_id, request.step_id)
        call = Call(dataclasses.replace(to_input(request), timeout_s=context.time_remaining()))
        async for _ in self._router.run(call):
            pass
        return router_pb2.CompleteResponse(text=call.text, summary=to_summary(call))

    async def Embed(
        self, request: router_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.EmbedResponse:
        """One vector per input, through the embedding path (policy, redaction, budgets, audit)."""
        inp = EmbeddingInput(
            inputs=tuple(request.inputs),
            model=request.model,
            dimensions=request.dimensions,
            timeout_s=context.time_remaining(),
        )
        call = Call(inp)
        await self._router.embed(call)
        resp = router_pb2.EmbedResponse(summary=to_summary(call))
        for row in call.vectors:
            resp.embeddings.add().values.extend(row.tolist())
        return resp
