"""OpenAI-protocol engines the pool can probe: where each flavour says it is ready, and which of
its Prometheus metrics carry the load figures the scheduler needs.

| flavour       | ready when                 | running                   | waiting                    | KV cache in use (0..1)                                  | latency / TTFT histograms (seconds)                                      |
|---------------|----------------------------|---------------------------|----------------------------|---------------------------------------------------------|--------------------------------------------------------------------------|
| vllm          | GET /health 200            | vllm:num_requests_running | vllm:num_requests_waiting  | vllm:kv_cache_usage_perc (older vllm:gpu_cache_usage_perc) | vllm:e2e_request_latency_seconds / vllm:time_to_first_token_seconds      |
| sglang        | GET /health 200            | sglang:num_running_reqs   | sglang:num_queue_reqs      | sglang:token_usage                                      | sglang:e2e_request_latency_seconds / sglang:time_to_first_token_seconds  |
| tgi           | GET /health 200            | tgi_batch_current_size    | tgi_queue_size             | (none: unknown, never 0)                                | tgi_request_duration / (none)                                            |
| ollama        | GET /v1/models 200         | (no Prometheus metrics)   |                            |                                                         |                                                                          |
| triton-openai | GET /health/ready 200      | Triton's own nv_* names (scrape.py)                                                                                                                                        |

Prefix-cache hit rate: vLLM's counters `vllm:prefix_cache_hits_total` over
`vllm:prefix_cache_queries_total` (prompt tokens found / looked up; V0's gauge
`vllm:gpu_prefix_cache_hit_rate` otherwise), SGLang's gauge `sglang:cache_hit_rate`; TGI, Ollama
and Triton export none (unknown).

Every flavour lists its models at GET /v1/models (`data[].id`). Sources: vLLM
docs.vllm.ai/en/stable/usage/metrics/ (and v0.5.0/serving/metrics.html for
gpu_cache_usage_perc); SGLang docs.sglang.io/docs/references/production_metrics (labels
`model_name`); TGI huggingface.co/docs/text-generation-inference/reference/metrics (one model
per server, no model label); Triton's OpenAI frontend (server/python/openai: /health/ready,
/metrics in Triton's names); Ollama serves no /metrics. A metric that is absent is unknown:
a model without its running and waiting figures gets no load figures from the scrape.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from services.common import prom_text
from services.pool.scrape import parse_triton_metrics
from services.pool.state import MetricsSample, ModelLoad


@dataclass(frozen=True)
class Flavour:
    name: str
    health_path: str  # "" = no health route: listing the models decides
    running: tuple[str, ...] = ()  # gauge names, the first one present wins
    waiting: tuple[str, ...] = ()
    kv_fraction: tuple[str, ...] = ()
    latency: str = ""  # histogram base names
    ttft: str = ""
    model_label: str = "model_name"  # "" = one model per server: figures belong to it
    triton_metrics: bool = False  # Triton's own names (the OpenAI frontend in front of Triton)
    prefix_queries: str = ""  # cumulative prompt tokens looked up in the prefix cache (counter)
    prefix_hits: str = ""  # ... and found there
    prefix_hit_rate: tuple[str, ...] = ()  # a hit-rate gauge in [0, 1], where the engine has one


FLAVOURS: dict[str, Flavour] = {
    f.name: f
    for f in (
        Flavour(
            "vllm", "/health", ("vllm:num_requests_running",), ("vllm:num_requests_waiting",),
            ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
            "vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds",
            prefix_queries="vllm:prefix_cache_queries_total", prefix_hits="vllm:prefix_cache_hits_total",
            prefix_hit_rate=("vllm:gpu_prefix_cache_hit_rate",),
        ),
        Flavour(
            "sglang", "/health", ("sglang:num_running_reqs",), ("sglang:num_queue_reqs",), ("sglang:token_usage",),
            "sglang:e2e_request_latency_seconds", "sglang:time_to_first_token_seconds",
            prefix_hit_rate=("sglang:cache_hit_rate",),
        ),
        Flavour("tgi", "/health", ("tgi_batch_current_size",), ("tgi_queue_size",), (), "tgi_request_duration",
                model_label=""),
        Flavour("ollama", ""),
        Flavour("triton-openai", "/health/ready", triton_metrics=True),
    )
}  # fmt: skip
DEFAULT_FLAVOUR = "vllm"


def flavour_of(name: str) -> Flavour:
    return FLAVOURS[name or DEFAULT_FLAVOUR]


def parse_flavour_metrics(
    text: str, flavour: Flavour, served: Iterable[str], gpu_name: str = ""
) -> MetricsSample:
    """Load figures per served model from one scrape in the flavour's names; ValueError when
    the text is malformed."""
    if flavour.triton_metrics:
        return parse_triton_metrics(text, gpu_name=gpu_name)
    served = tuple(served)
    values: dict[str, dict[str, float]] = defaultdict(dict)  # model -> sample name -> value
    for name, labels, value in prom_text.samples(text):
        models: Iterable[str] = (labels.get(flavour.model_label, ""),) if flavour.model_label else served
        for model in models:
            # Summed over other labels (engine index, tp rank...): one figure per model.
            values[model][name] = values[model].get(name, 0.0) + value
    loads: dict[tuple[str, str], ModelLoad] = {}
    for model, v in values.items():
        running, waiting = _first(v, flavour.running), _first(v, flavour.waiting)
        if not model or running is None or waiting is None:
            continue  # unknown, not zero
        kv = _first(v, flavour.kv_fraction)
        count = int(v.get(f"{flavour.latency}_count", 0)) if flavour.latency else 0
        loads[(model, "")] = ModelLoad(
            waiting=max(0, int(waiting)),
            active=max(0, int(running)),
            kv_cache_fraction=min(1.0, max(0.0, kv)) if kv is not None else 0.0,
            kv_cache_known=kv is not None,
            prefix_queries=v.get(flavour.prefix_queries) if flavour.prefix_queries else None,
            prefix_hits=v.get(flavour.prefix_hits) if flavour.prefix_hits else None,
            prefix_hit_rate=_first(v, flavour.prefix_hit_rate),
            requests=count,
            successes=count,
            request_us=int(v.get(f"{flavour.latency}_sum", 0.0) * 1e6) if flavour.latency else 0,
            ttft_ms_sum=v.get(f"{flavour.ttft}_sum", 0.0) * 1000 if flavour.ttft else 0.0,
            ttft_count=int(v.get(f"{flavour.ttft}_count", 0)) if flavour.ttft else 0,
        )
    return MetricsSample(loads=loads)


def _first(values: dict[str, float], names: tuple[str, ...]) -> float | None:
    return next((values[n] for n in names if n in values), None)
