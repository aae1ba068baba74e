"""The engine simulator behaves as a real tritonserver does, in everything the router and the
pool rely on. Each test runs on both (the `backend` fixture); deliberate differences are
listed in services/enginesim/README.md."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from services.pool.control import TritonControl
from services.pool.scrape import parse_triton_metrics
from services.router.triton import parse_response
from tests.realtriton.conformance import (
    eventually,
    final,
    index_states,
    infer_request,
    rpc_error,
    scrape,
    stream_all,
    text,
)


async def test_server_is_triton_and_ready(backend, stub):
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await stub.ServerMetadata(pb.ServerMetadataRequest())).name == "triton"
    for model in (backend.decoupled, backend.plain):
        assert (await stub.ModelReady(pb.ModelReadyRequest(name=model))).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="nope"))).ready
    async with grpc.aio.insecure_channel(backend.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_metadata_and_config_show_the_ensemble_tensors(backend, stub):
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=backend.decoupled))
    inputs = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
    assert inputs["text_input"] == ("BYTES", [-1, 1]) and inputs["max_tokens"] == ("INT32", [-1, 1])
    assert inputs["stream"] == ("BOOL", [-1, 1]) and inputs["seed"] == ("UINT64", [-1, 1])
    outs = {t.name: (t.datatype, list(t.shape)) for t in meta.outputs}
    assert outs["text_output"] == ("BYTES", [-1, -1]) and outs["num_output_tokens"] == ("INT32", [-1, 1])
    for model, decoupled in ((backend.decoupled, True), (backend.plain, False)):
        config = (await stub.ModelConfig(pb.ModelConfigRequest(name=model))).config
        assert config.model_transaction_policy.decoupled is decoupled
        assert config.max_batch_size > 0
        required = {i.name for i in config.input if not i.optional}
        assert required == {"text_input", "max_tokens"}


async def test_repository_index_lists_ready_models(backend, stub):
    states = await index_states(stub)
    assert states[backend.decoupled] == "READY" and states[backend.plain] == "READY"


async def test_unknown_models_and_versions_are_not_found_in_tritons_words(backend, stub):
    for model, version, words in (
        ("nope", "", "Request for unknown model: 'nope' is not found"),
        ("", "", "Request for unknown model: '' is not found"),
        (backend.plain, "7", f"Request for unknown model: '{backend.plain}' version 7 is not found"),
    ):
        err = await rpc_error(stub.ModelInfer(infer_request(model, version=version)))
        assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, words)
        err = await rpc_error(stub.ModelConfig(pb.ModelConfigRequest(name=model, version=version)))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        [resp] = await stream_all(stub, infer_request(model, version=version))
        assert resp.error_message == words and resp.infer_response.id == "conf-1"


async def test_model_infer_on_a_decoupled_model_is_unimplemented(backend, stub):
    err = await rpc_error(stub.ModelInfer(infer_request(backend.decoupled)))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.details() == "ModelInfer RPC doesn't support models with decoupled transaction policy"


async def test_model_infer_echoes_the_id_and_returns_prompt_plus_completion(backend, stub):
    resp = await stub.ModelInfer(infer_request(backend.plain, "say it", 4, request_id="abc-9"))
    assert resp.id == "abc-9" and resp.model_name == backend.plain
    assert text(resp).startswith("say it") and len(text(resp)) > len("say it")
    counted = await stub.ModelInfer(
        infer_request(
            backend.plain,
            "say it",
            4,
            extra={"exclude_input_in_output": True, "return_num_output_tokens": True},
        )
    )
    assert not text(counted).startswith("say it")
    assert parse_response(counted).output_tokens == 4


async def test_missing_input_is_invalid_argument_with_count_then_names(backend, stub):
    err = await rpc_error(stub.ModelInfer(infer_request(backend.plain, drop=("text_input",))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected number of inputs between 2 and" in err.details()
    assert "but got 1 inputs" in err.details()
    assert "missing required input(s) ['text_input']" in err.details()


async def test_streaming_sends_one_response_per_token_then_an_empty_final(backend, stub):
    """As the router asks for it (triton_enable_empty_final_response): deltas, then an empty
    final response. (TensorRT-LLM can flag its last token final; PyTriton models cannot.)"""
    req = infer_request(backend.decoupled, "count", 4, stream=True, empty_final=True, request_id="s-2")
    *deltas, last = await stream_all(stub, req)
    assert len(deltas) == 4 and all(text(r.infer_response) for r in deltas)
    assert all(final(r.infer_response) is False and not r.error_message for r in deltas)
    assert final(last.infer_response) is True and not last.infer_response.outputs
    assert all(r.infer_response.id == "s-2" for r in (*deltas, last))


async def test_non_streamed_request_on_a_decoupled_model_answers_once(backend, stub):
    req = infer_request(
        backend.decoupled, "whole", 3, extra={"exclude_input_in_output": True}, empty_final=True
    )
    answer, last = await stream_all(stub, req)
    assert final(answer.infer_response) is False and text(answer.infer_response)
    assert not text(answer.infer_response).startswith("whole")
    assert final(last.infer_response) is True and not last.infer_response.outputs


async def test_non_decoupled_model_on_the_stream_answers_with_a_final_response(backend, stub):
    [resp] = await stream_all(stub, infer_request(backend.plain, "one", 2))
    assert final(resp.infer_response) is True and text(resp.infer_response).startswith("one")


async def test_request_counters_are_typed_counters_the_pool_can_read(backend, stub):
    before = parse_triton_metrics(await scrape(backend.metrics_url)).loads
    await stub.ModelInfer(infer_request(backend.plain, "count me", 2))
    body = await scrape(backend.metrics_url)
    assert "# TYPE nv_inference_request_success counter" in body
    types = {f.name: f.type for f in text_string_to_metric_families(body)}
    assert types["nv_inference_request_success"] == "counter"
    after = parse_triton_metrics(body).loads
    key = (backend.plain, "1")
    old = before[key].successes if key in before else 0
    assert after[key].successes == old + 1 and after[key].requests >= old + 1


async def test_unload_answers_before_the_model_is_gone_and_the_pool_waits(own_backend):
    """Unknown models unload OK and fail to load with INTERNAL; an unloaded model has no
    available versions; TritonControl.unload returns only once the model left UNLOADING.
    On a server of its own: an unload that hangs must not leave the session's one not ready."""
    backend, control = own_backend, TritonControl(unload_timeout_s=60)
    async with grpc.aio.insecure_channel(backend.address) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="nope"))
        err = await rpc_error(stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope")))
        assert err.code() == grpc.StatusCode.INTERNAL and "failed to load 'nope'" in err.details()
        try:
            await control.unload(backend.address, backend.spare)
            assert (await index_states(stub))[backend.spare] == "UNAVAILABLE"
            err = await rpc_error(stub.ModelInfer(infer_request(backend.spare)))
            assert err.code() == grpc.StatusCode.NOT_FOUND
            assert err.details() == f"Request for unknown model: '{backend.spare}' has no available versions"
            await control.load(backend.address, backend.spare)
            assert (await index_states(stub))[backend.spare] == "READY"
        finally:
            await control.close()


async def test_a_cancelled_stream_leaves_the_server_serving(backend, stub):
    """The router cancels the upstream stream when its caller goes away: the server drops the
    request (nothing left pending) and serves the next one. (How the cancelled request is
    counted differs: see services/enginesim/README.md.)"""
    call = stub.ModelStreamInfer(
        iter([infer_request(backend.decoupled, "a long one", 400, stream=True, empty_final=True)]), timeout=60
    )
    got = 0
    async for resp in call:
        assert not resp.error_message
        got += 1
        if got == 2:
            break
    call.cancel()

    async def drained() -> bool:
        loads = parse_triton_metrics(await scrape(backend.metrics_url)).loads
        load = loads.get((backend.decoupled, "1"))
        return load is None or load.waiting == 0

    await eventually(drained, 30)
    *deltas, last = await stream_all(
        stub, infer_request(backend.decoupled, "next", 2, stream=True, empty_final=True)
    )
    assert len(deltas) == 2 and final(last.infer_response) is True
