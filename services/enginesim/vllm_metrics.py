"""Prometheus metrics with vLLM's names, for the simulator's OpenAI protocol (served on the API
port at ``/metrics``, as vLLM does), computed from the same engines as the Triton names.

| vLLM metric                            | type      | value here                                   |
|----------------------------------------|-----------|----------------------------------------------|
| vllm:num_requests_running              | gauge     | sequences in the running batch               |
| vllm:num_requests_waiting              | gauge     | sequences queued for admission               |
| vllm:kv_cache_usage_perc               | gauge     | KV blocks used / capacity (a 0..1 fraction)  |
| vllm:gpu_cache_usage_perc              | gauge     | the same, under vLLM's name before V1        |
| vllm:prefix_cache_queries_total        | counter   | prompt tokens looked up in the prefix cache  |
| vllm:prefix_cache_hits_total           | counter   | prompt tokens found there                    |
| vllm:prompt_tokens_total               | counter   | prompt tokens processed                      |
| vllm:generation_tokens_total           | counter   | tokens generated                             |
| vllm:e2e_request_latency_seconds       | histogram | finished requests' latency (sum and count)   |

Sources: vLLM's "Production Metrics" page (docs.vllm.ai/en/stable/usage/metrics/: the gauge
and counter names; ``vllm:gpu_cache_usage_perc`` in docs.vllm.ai/en/v0.5.0/serving/metrics.html,
"1 means 100 percent usage") and llm-d's model server metrics reference
(llm-d.ai/docs/dev/operations/observability/model-server-metrics: kv_cache_usage_perc is
0.0 to 1.0; hits over queries is the prefix-cache hit rate). Every series carries vLLM's
``model_name`` label. The latency histogram has only the ``+Inf`` bucket: the pool reads its
sum and count.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .simulator import Simulator

LABELS = ["model_name"]


class VllmCollector:
    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Number of requests in model execution batches.", labels=LABELS
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels=LABELS
        )
        kv = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels=LABELS
        )
        kv_old = GaugeMetricFamily(
            "vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", labels=LABELS
        )
        queries = CounterMetricFamily(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            labels=LABELS,
        )
        hits = CounterMetricFamily(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", labels=LABELS
        )
        prompt = CounterMetricFamily(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels=LABELS
        )
        generation = CounterMetricFamily(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels=LABELS
        )
        latency = HistogramMetricFamily(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", labels=LABELS
        )
        for name, engine in sorted(self._sim.engines().items()):
            st, cache = engine.stats, engine.kv_cache
            fraction = cache.used / cache.capacity if cache.capacity else 0.0
            running.add_metric([name], engine.running)
            waiting.add_metric([name], engine.waiting)
            kv.add_metric([name], fraction)
            kv_old.add_metric([name], fraction)
            queries.add_metric([name], st.input_tokens)
            hits.add_metric([name], cache.reused_total * engine.spec.kv_block_size)
            prompt.add_metric([name], st.input_tokens)
            generation.add_metric([name], st.output_tokens)
            latency.add_metric([name], [("+Inf", st.success)], st.request_ns / 1e9)
        yield from (running, waiting, kv, kv_old, queries, hits, prompt, generation, latency)


def build_vllm_registry(sim: Simulator) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VllmCollector(sim))
    return registry
