"""Engine simulator's /metrics over a real server: Triton's metric names, and the figures that
follow running and waiting requests (the simulator and fixtures of test_enginesim_server.py)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from services.enginesim.testing import EngineSimHandle
from tests.helpers.polling import wait_for
from tests.helpers.prometheus import triton_sample_name
from tests.integration import test_enginesim_server as server_tests

INFER_MODEL, SLOW_MODEL = server_tests.INFER_MODEL, server_tests.SLOW_MODEL
infer_inputs = server_tests.infer_inputs
sim, client = server_tests.sim, server_tests.client  # the same simulator and client fixtures


async def scrape(sim: EngineSimHandle) -> tuple[str, Callable[..., float]]:
    """GET /metrics; returns the body and value(name, **labels) over the parsed samples."""
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(sim.metrics_url, timeout=5).read().decode())
    samples = {
        (triton_sample_name(family.type, s.name), tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    return body, value


async def test_metrics_endpoint_shows_triton_names(sim, client):
    await client.infer(INFER_MODEL, infer_inputs("count me", 3))
    body, value = await scrape(sim)
    # Triton's counter names exactly: no "_total" family added by the client library.
    assert "nv_inference_request_success_total" not in body and "nv_inference_count_total" not in body
    mv = {"model": INFER_MODEL, "version": "1"}
    assert value("nv_inference_request_success", **mv) == 1
    assert value("nv_inference_count", **mv) == 1
    assert value("nv_inference_request_failure", reason="REJECTED", **mv) == 0
    assert value("nv_inference_pending_request_count", **mv) == 0
    assert value("nv_inference_request_duration_us", **mv) > 0
    assert value("nv_inference_compute_infer_duration_us", **mv) > 0
    assert value("nv_inference_queue_duration_us", **mv) >= 0
    assert value("nv_trt_llm_request_metrics", request_type="max", **mv) == 8
    assert value("nv_trt_llm_request_metrics", request_type="active", **mv) == 0
    assert value("nv_trt_llm_request_metrics", request_type="waiting", **mv) == 0
    assert value("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="max", **mv) == 1024
    assert value("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="used", **mv) == 0
    assert value("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="fraction", **mv) == 0
    gpu = {"gpu_uuid": "GPU-enginesim-0"}
    assert value("nv_gpu_memory_total_bytes", **gpu) == 40 * 1024**3
    assert value("nv_gpu_memory_used_bytes", **gpu) == 30 * 1024**3  # three 10 GB models
    assert 0 <= value("nv_gpu_utilization", **gpu) <= 1


async def test_metrics_follow_running_and_waiting_requests(sim, client):
    first = asyncio.create_task(client.infer(SLOW_MODEL, infer_inputs("a", 3)))
    second = asyncio.create_task(client.infer(SLOW_MODEL, infer_inputs("b", 3)))
    mv = {"model": SLOW_MODEL, "version": "1"}

    def one_running_one_waiting(page: tuple[str, Callable[..., float]]) -> bool:
        active = page[1]("nv_trt_llm_request_metrics", request_type="active", **mv)
        return (active, page[1]("nv_trt_llm_request_metrics", request_type="waiting", **mv)) == (1, 1)

    # Both requests in (the second queued behind the first's 50 ms steps): waited for, not slept for.
    _, value = await wait_for(lambda: scrape(sim), one_running_one_waiting, timeout=10)
    assert value("nv_trt_llm_request_metrics", request_type="active", **mv) == 1
    assert value("nv_trt_llm_request_metrics", request_type="waiting", **mv) == 1
    assert value("nv_inference_pending_request_count", **mv) == 1
    assert value("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="used", **mv) == 1
    await asyncio.gather(first, second)
    _, value = await scrape(sim)
    assert value("nv_trt_llm_request_metrics", request_type="active", **mv) == 0
    assert value("nv_inference_request_success", **mv) == 2
    assert value("nv_inference_queue_duration_us", **mv) == 3 * 50_000_000  # 2nd waited 3 steps of 50 s
