"""Each OpenAI flavour's metric names become the pool's load figures; a missing metric is
unknown (no figures), never zero. Samples written as each project's docs show them."""

from __future__ import annotations

from services.pool.flavours import FLAVOURS, flavour_of, parse_flavour_metrics

VLLM = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="llama"} 4.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="llama"} 4.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="llama"} 2.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_count{engine="0",model_name="llama"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="llama"} 0.4
"""
OLD_VLLM = """vllm:num_requests_running{model_name="llama"} 1
vllm:num_requests_waiting{model_name="llama"} 0
vllm:gpu_cache_usage_perc{model_name="llama"} 0.5
"""
SGLANG = """# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="qwen"} 5.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="qwen"} 1.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="qwen"} 0.28
"""
TGI = """# TYPE tgi_queue_size gauge
tgi_queue_size 7
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 4
"""


def test_vllm_names_give_queue_kv_latency_and_ttft():
    load = parse_flavour_metrics(VLLM, FLAVOURS["vllm"], ["llama"]).load_for("llama", "")
    assert (load.active, load.waiting, load.kv_cache_fraction) == (3, 2, 0.25)
    assert (load.successes, load.request_us) == (4, 2_000_000)
    assert (load.ttft_count, round(load.ttft_ms_sum)) == (4, 400)
    old = parse_flavour_metrics(OLD_VLLM, flavour_of(""), ["llama"]).load_for("llama", "")
    assert old.kv_cache_fraction == 0.5  # vLLM before V1 named it gpu_cache_usage_perc


def test_sglang_and_tgi_names():
    s = parse_flavour_metrics(SGLANG, FLAVOURS["sglang"], ["qwen"]).load_for("qwen", "")
    assert (s.active, s.waiting, s.kv_cache_fraction) == (5, 1, 0.28)
    t = parse_flavour_metrics(TGI, FLAVOURS["tgi"], ["mistral"]).load_for("mistral", "")
    assert (t.active, t.waiting) == (4, 7)  # TGI has no model label: its one model's figures


def test_a_missing_queue_metric_is_unknown_not_zero():
    partial = 'vllm:num_requests_running{model_name="llama"} 3\n'
    assert parse_flavour_metrics(partial, FLAVOURS["vllm"], ["llama"]).load_for("llama", "") is None
    assert parse_flavour_metrics("", FLAVOURS["ollama"], ["llama3"]).loads == {}


def test_triton_openai_frontend_reads_tritons_names():
    text = 'nv_trt_llm_request_metrics{model="ens",version="1",request_type="waiting"} 6\n'
    assert parse_flavour_metrics(text, FLAVOURS["triton-openai"], ["ens"]).load_for("ens", "1").waiting == 6


VLLM_PREFIX = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama"} 0.0
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{model_name="llama"} %d
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{model_name="llama"} %d
"""


def test_tgi_kv_use_is_unknown_not_zero():
    t = parse_flavour_metrics(TGI, FLAVOURS["tgi"], ["mistral"]).load_for("mistral", "")
    assert not t.kv_cache_known  # TGI exports no KV figure: 0 would look like an empty cache
    s = parse_flavour_metrics(SGLANG, FLAVOURS["sglang"], ["qwen"]).load_for("qwen", "")
    assert s.kv_cache_known


def test_prefix_cache_figures_per_flavour():
    v = parse_flavour_metrics(VLLM_PREFIX % (400, 100), FLAVOURS["vllm"], ["llama"]).load_for("llama", "")
    assert (v.prefix_queries, v.prefix_hits, v.prefix_hit_rate) == (400, 100, None)
    gauge = SGLANG + '# TYPE sglang:cache_hit_rate gauge\nsglang:cache_hit_rate{model_name="qwen"} 0.625\n'
    s = parse_flavour_metrics(gauge, FLAVOURS["sglang"], ["qwen"]).load_for("qwen", "")
    assert s.prefix_hit_rate == 0.625 and s.prefix_queries is None
    t = parse_flavour_metrics(TGI, FLAVOURS["tgi"], ["mistral"]).load_for("mistral", "")
    assert (t.prefix_queries, t.prefix_hits, t.prefix_hit_rate) == (None, None, None)
