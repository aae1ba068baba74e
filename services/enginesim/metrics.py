"""Prometheus metrics with Triton's and TensorRT-LLM's names, computed from live state.

A custom collector on its own CollectorRegistry reads the simulator at scrape time, so the
values always follow the simulated state and nothing has to be updated on the hot path.

Triton's counters (``nv_inference_request_success`` ...) are typed ``counter`` but have no
``_total`` suffix. The Python client would add one to the family of any ``counter``, so the
collector builds them untyped and :func:`exposition` writes their TYPE lines as Triton does.
Consumers must cope with that: Python's parser, for one, names such samples ``..._total``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from socket import AF_INET6
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily

from .sequence import FAILURE_REASONS, EngineStats
from .simulator import GIB, Simulator

UTIL_WINDOW_S = 1.0  # Triton's GPU metrics are sampled per metrics interval (default 2 s)
GPU_UUID = "GPU-enginesim-0"  # one simulated GPU; Triton labels GPU metrics by gpu_uuid


def busy_seconds(stats: EngineStats, now: float) -> float:
    """GPU seconds the engine has used up to ``now`` (its event loop's clock): its finished
    steps, and the part of the step in progress already run."""
    done, start, end = stats.busy_clock
    return done + min(max(0.0, now - start), end - start)


class SimulatorCollector:
    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._lock = threading.Lock()  # scrapes may run concurrently in the HTTP threads
        # (monotonic time, summed busy seconds) at each scrape; utilization is measured over a
        # trailing window, so several scrapers (the pool, Prometheus) each see the whole of it.
        self._util_samples: deque[tuple[float, float]] = deque([(time.monotonic(), 0.0)])

    def collect(self) -> Iterator[Metric]:
        sim = self._sim
        engines = sorted(sim.engines().items())
        model_labels = ["model", "version"]

        def untyped(name: str, doc: str, labels: list[str] | None = None) -> UnknownMetricFamily:
            return UnknownMetricFamily(name, doc, labels=labels or model_labels)

        def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels or model_labels)

        success = untyped(
            "nv_inference_request_success", "Number of successful inference requests, all batch sizes"
        )
        failure = untyped(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes",
            ["model", "version", "reason"],
        )
        count = untyped(
            "nv_inference_count", "Number of inferences performed (does not include cached requests)"
        )
        execs = untyped("nv_inference_exec_count", "Number of model executions performed")
        pending = gauge(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
        )
        req_us = untyped(
            "nv_inference_request_duration_us", "Cumulative inference request duration in microseconds"
        )
        queue_us = untyped(
            "nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds"
        )
        infer_us = untyped(
            "nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds"
        )
        requests = gauge(
            "nv_trt_llm_request_metrics", "TRT LLM request metrics", ["model", "version", "request_type"]
        )
        kv = gauge(
            "nv_trt_llm_kv_cache_block_metrics",
            "TRT LLM KV cache block metrics",
            ["model", "version", "kv_cache_block_type"],
        )
        general = gauge(
            "nv_trt_llm_general_metrics", "General TRT LLM metrics", ["model", "version", "general_type"]
        )
        now_us = int(time.time() * 1e6)
        now_mono = time.monotonic()  # the engines' event-loop clock
        busy_total = 0.0
        for name, engine in engines:
            spec, st = engine.spec, engine.stats
            mv = [name, spec.version]
            success.add_metric(mv, st.success)
            for reason in FAILURE_REASONS:
                failure.add_metric([*mv, reason], st.failures[reason])
            count.add_metric(mv, st.success)
            execs.add_metric(mv, st.execution_count)
            pending.add_metric(mv, engine.waiting)
            req_us.add_metric(mv, st.request_ns // 1000)
            queue_us.add_metric(mv, st.queue_ns // 1000)
            infer_us.add_metric(mv, st.compute_ns // 1000)
            for kind, value in (
                ("active", engine.running),
                ("max", spec.max_running_sequences),
                ("scheduled", st.last_step_batch if engine.running else 0),
                ("context", st.last_step_context if engine.running else 0),
                ("waiting", engine.waiting),
            ):
                requests.add_metric([*mv, kind], value)
            cache = engine.kv_cache
            used, cap = cache.used, cache.capacity
            for kind, value in (
                ("max", cap),
                ("free", cap - used),
                ("used", used),
                ("tokens_per", spec.kv_block_size),
                ("reused", cache.reused_total),
                ("fraction", used / cap),
            ):
                kv.add_metric([*mv, kind], value)
            general.add_metric([*mv, "timestamp"], now_us)
            general.add_metric([*mv, "iteration_counter"], st.execution_count)
            busy_total += busy_seconds(st, now_mono)
        yield from (
            success,
            failure,
            count,
            execs,
            pending,
            req_us,
            queue_us,
            infer_us,
            requests,
            kv,
            general,
        )

        gpu = ["gpu_uuid"]
        total = gauge("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", gpu)
        total.add_metric([GPU_UUID], sim.gpu_memory_total_bytes)
        used_mem = gauge("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", gpu)
        used_mem.add_metric([GPU_UUID], int(sim.gpu_memory_used_gb * GIB))
        util = gauge("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", gpu)
        util.add_metric([GPU_UUID], self._utilization(busy_total))
        yield from (total, used_mem, util)

    def _utilization(self, busy_total: float) -> float:
        """Share of the last UTIL_WINDOW_S (or, with sparser scrapes, of the time since the newest
        scrape at least that old) that the GPU spent in steps, as Triton samples it each metrics
        interval whoever scrapes. Co-located models share the GPU (GpuClock), so their busy
        times add up to at most the elapsed time; the cap only absorbs rounding. Unloaded models
        drop out of ``busy_total``, which then may shrink: the window restarts there.
        """
        with self._lock:
            now = time.monotonic()
            samples = self._util_samples
            if busy_total < samples[-1][1]:
                samples.clear()
            samples.append((now, busy_total))
            while len(samples) > 2 and samples[1][0] <= now - UTIL_WINDOW_S:
                samples.popleft()  # keep the newest sample at least a window old, and newer ones
            start_t, start_busy = samples[0]
        elapsed = now - start_t
        if elapsed <= 0:
            return 0.0
        return min(1.0, (busy_total - start_busy) / elapsed)


# The families Triton types as counters (checked on tritonserver 2.51).
COUNTER_FAMILIES = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)
_RETYPE = {f"# TYPE {n} untyped".encode(): f"# TYPE {n} counter".encode() for n in COUNTER_FAMILIES}


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format as Triton writes it: counters typed, sample names without ``_total``."""
    lines = generate_latest(registry).split(b"\n")
    return b"\n".join(_RETYPE.get(line, line) for line in lines)


def build_registry(sim: Simulator) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SimulatorCollector(sim))
    return registry


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scrape must not keep the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # no access log per scrape
        pass


class MetricsServer:
    """The HTTP side (``/metrics``, ``/faults``: see ``admin.py``) served from a thread.

    Built by hand rather than with ``prometheus_client.start_http_server`` because that one
    polls for shutdown every 0.5 s, which every stop (and every test) would wait for.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], host: str, port: int) -> None:
        server_class = _ThreadingWSGIServer
        if ":" in host:  # IPv6 literal
            server_class = type(
                "_ThreadingWSGIServer6", (_ThreadingWSGIServer,), {"address_family": AF_INET6}
            )
        self._server = make_server(host, port, app, server_class, _QuietHandler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="enginesim-metrics",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
