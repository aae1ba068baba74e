"""The services' reader of Prometheus text pages against prometheus_client's own parser."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.common import prom_text
from tests.helpers.prometheus import triton_sample_name


def _both(text: str, triton: bool = False) -> tuple[dict, dict]:
    """(prometheus_client's samples, ours); `triton`: undo the parser's `_total` on counters
    whose samples Triton writes without it."""
    reference = {
        (triton_sample_name(f.type, s.name) if triton else s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    ours = {(n, tuple(sorted(labels.items()))): v for n, labels, v in prom_text.samples(text)}
    return reference, ours


def test_a_page_prometheus_client_writes_reads_the_same():
    registry = CollectorRegistry()
    calls = Counter("calls", "help", ["agent", "path"], registry=registry)
    calls.labels('quote " inside', "back\\slash and\nnewline").inc(3)
    calls.labels("comma, } and {", "a=b").inc()
    Gauge("vllm:num_requests_running", "help", ["model_name"], registry=registry).labels("m").set(2.5)
    Histogram("latency_seconds", "help", registry=registry).observe(0.3)
    reference, ours = _both(generate_latest(registry).decode())
    assert ours == reference
    assert ours[("calls_total", (("agent", 'quote " inside'), ("path", "back\\slash and\nnewline")))] == 3


def test_triton_counters_keep_the_names_triton_writes():
    text = (
        "# HELP nv_inference_request_success Number of successful inference requests\n"
        "# TYPE nv_inference_request_success counter\n"
        'nv_inference_request_success{model="m",version="1"} 7\n'
        "# TYPE nv_gpu_utilization gauge\n"
        'nv_gpu_utilization{gpu_uuid="GPU-1"} 0.25 1700000000000\n'
        "nv_plain +Inf\n"
    )
    reference, ours = _both(text, triton=True)
    assert ours == reference
    assert next(prom_text.samples(text)) == (
        "nv_inference_request_success",
        {"model": "m", "version": "1"},
        7.0,
    )


@pytest.mark.parametrize(
    "line",
    [
        'm{a="1" 2',  # the labels never close
        "m{a=1} 2",  # an unquoted value
        'm{a="1"}',  # no value
        "m{} 1 2 3",  # too many fields
        "m 1 soon",  # a timestamp that is not one
        "m one",  # a value that is not a number
        "1m 2",  # not a metric name
    ],
)
def test_a_malformed_line_is_a_value_error_naming_it(line):
    with pytest.raises(ValueError, match="line 2"):
        list(prom_text.samples("ok 1\n" + line + "\n"))


def test_empty_labels_and_a_trailing_comma_are_read():
    assert list(prom_text.samples('a{} 1\nb{x="1",} 2\n')) == [("a", {}, 1.0), ("b", {"x": "1"}, 2.0)]


def test_any_mangled_page_is_read_or_refused_with_a_value_error():
    """A probe must fail cleanly on whatever an engine serves: 1,000 seeded mutations of a real
    page (characters that matter to the format inserted, removed or replaced) are each read or
    refused with ValueError, never another exception."""
    import random

    registry = CollectorRegistry()
    Counter("calls", "help", ["agent"], registry=registry).labels('a "b" \\ c').inc()
    Histogram("latency_seconds", "help", registry=registry).observe(0.3)
    page = generate_latest(registry).decode() + 'nv_gpu_utilization{gpu_uuid="GPU-1"} 0.25 1700000000000\n'
    rng = random.Random(7)
    alphabet = '{}",=\\ \n#abc01.+-e\x00é'
    for _ in range(1000):
        text = list(page)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(text))
            action = rng.randrange(3)
            if action == 0:
                text.insert(i, rng.choice(alphabet))
            elif action == 1 and len(text) > 1:
                del text[i]
            else:
                text[i] = rng.choice(alphabet)
        try:
            for name, labels, value in prom_text.samples("".join(text)):
                assert isinstance(name, str) and isinstance(labels, dict) and isinstance(value, float)
        except ValueError:
            pass
