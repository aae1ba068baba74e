"""Reads Triton's / TensorRT-LLM's Prometheus metrics into per-model load and per-GPU figures.

Names (see notes/triton-protocol.md): `nv_trt_llm_request_metrics{request_type=active|waiting}`,
`nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction|used|max}`,
`nv_inference_pending_request_count` (queue depth for models without TRT-LLM metrics) and
`nv_gpu_utilization` / `nv_gpu_memory_used_bytes` / `nv_gpu_memory_total_bytes` per `gpu_uuid`.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from services.common import prom_text
from services.pool.state import GpuSample, MetricsSample, ModelLoad

MAX_METRICS_BYTES = 8 * 1024 * 1024  # a runaway exporter must not eat the pool's memory

# Cumulative per-model counters: idle detection watches requests move; latency is the delta of
# duration over the delta of successes. The first-response histogram exists only when Triton
# runs with histograms on (decoupled models' TTFT).
_COUNTERS = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_first_response_histogram_ms_sum": "ttft_sum",
    "nv_inference_first_response_histogram_ms_count": "ttft_count",
}


def _clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def parse_triton_metrics(text: str, gpu_name: str = "") -> MetricsSample:
    """Parses the text exposition format; raises ValueError on malformed input."""
    requests: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    kv: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    pending: dict[tuple[str, str], float] = {}
    counters: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    gpu: dict[str, dict[str, float]] = {}  # insertion order = Triton's device order
    for name, labels, value in prom_text.samples(text):  # names as Triton writes them
        key = (labels.get("model", ""), labels.get("version", ""))
        if name == "nv_trt_llm_request_metrics" and "request_type" in labels:
            requests[key][labels["request_type"]] = value
        elif name == "nv_trt_llm_kv_cache_block_metrics" and "kv_cache_block_type" in labels:
            kv[key][labels["kv_cache_block_type"]] = value
        elif name == "nv_inference_pending_request_count":
            pending[key] = value
        elif name in _COUNTERS:
            # Summed over the other labels (failure has one series per `reason`).
            counters[key][_COUNTERS[name]] += value
        elif name in ("nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"):
            gpu.setdefault(labels.get("gpu_uuid", ""), {})[name] = value

    loads: dict[tuple[str, str], ModelLoad] = {}
    for key in set(requests) | set(kv) | set(pending) | set(counters):
        req, blocks, cnt = requests.get(key, {}), kv.get(key, {}), counters.get(key, {})
        kv_known = True
        if "fraction" in blocks:
            fraction = blocks["fraction"]
        elif blocks.get("max", 0) > 0:
            fraction = blocks.get("used", 0.0) / blocks["max"]
        else:  # not a TensorRT-LLM model (or no KV metrics): unknown, not empty
            fraction, kv_known = 0.0, False
        # TRT-LLM's own waiting count when present; Triton's pending count otherwise.
        waiting = req.get("waiting", pending.get(key, 0.0))
        loads[key] = ModelLoad(
            waiting=max(0, int(waiting)),
            active=max(0, int(req.get("active", 0))),
            kv_cache_fraction=_clamp01(fraction),
            requests=int(cnt.get("success", 0) + cnt.get("failure", 0)),
            successes=int(cnt.get("success", 0)),
            request_us=int(cnt.get("request_us", 0)),
            ttft_ms_sum=float(cnt.get("ttft_sum", 0.0)),
            ttft_count=int(cnt.get("ttft_count", 0)),
            max_running=max(0, int(req.get("max", 0))),
            kv_cache_known=kv_known,
        )

    gpus = tuple(
        GpuSample(
            index=i,
            uuid=uuid,
            name=gpu_name,
            memory_total_bytes=int(v.get("nv_gpu_memory_total_bytes", 0)),
            memory_used_bytes=int(v.get("nv_gpu_memory_used_bytes", 0)),
            utilization=_clamp01(v.get("nv_gpu_utilization", 0.0)),
            source="triton_metrics",
        )
        for i, (uuid, v) in enumerate(gpu.items())
    )
    return MetricsSample(loads=loads, gpus=gpus)


def http_get_text(url: str, timeout_s: float) -> str:
    """Blocking GET (run it in a thread). Raises OSError/ValueError on any failure."""
    req = urllib.request.Request(url, headers={"Accept": "text/plain"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        body = resp.read(MAX_METRICS_BYTES + 1)
    if len(body) > MAX_METRICS_BYTES:
        raise ValueError(f"metrics body over {MAX_METRICS_BYTES} bytes")
    return body.decode("utf-8", errors="replace")
