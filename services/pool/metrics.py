"""Prometheus figures of the pool, computed from the endpoint table at scrape time.

A collector (rather than gauges set by the probes) means a deregistered endpoint's series
disappear with it, and the probe loop does no metrics work at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from services.pool.deployments import DeploymentView
from services.pool.endpoints import EndpointTable
from services.pool.state import HEALTHY, GpuSample


class PoolCollector:
    def __init__(
        self,
        table: EndpointTable,
        gpu_rows: Callable[[], list[tuple[str, GpuSample]]],
        deployments: Callable[[], tuple[DeploymentView, ...]] = lambda: (),
    ) -> None:
        self._table = table
        self._gpu_rows = gpu_rows
        self._deployments = deployments  # cached copies: this runs on the scrape thread

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering does not run a full collect on the event loop.
        yield GaugeMetricFamily("harness_pool_endpoint_healthy", "", labels=["endpoint"])
        yield GaugeMetricFamily("harness_pool_gpu_memory_used_bytes", "", labels=["endpoint", "gpu"])
        yield GaugeMetricFamily("harness_pool_gpu_utilization", "", labels=["endpoint", "gpu"])
        for name in _DEPLOYMENT_GAUGES:
            yield GaugeMetricFamily(name, "", labels=["model"])

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "harness_pool_endpoint_healthy",
            "1 when the endpoint passes its gRPC probes, else 0",
            labels=["endpoint"],
        )
        for state in self._table.states():
            healthy.add_metric([state.name], 1.0 if state.health == HEALTHY else 0.0)
        used = GaugeMetricFamily(
            "harness_pool_gpu_memory_used_bytes",
            "GPU memory in use (NVML or Triton metrics)",
            labels=["endpoint", "gpu"],
        )
        util = GaugeMetricFamily(
            "harness_pool_gpu_utilization",
            "GPU utilisation [0, 1] (NVML or Triton metrics)",
            labels=["endpoint", "gpu"],
        )
        for endpoint, gpu in self._gpu_rows():
            used.add_metric([endpoint, str(gpu.index)], gpu.memory_used_bytes)
            util.add_metric([endpoint, str(gpu.index)], gpu.utilization)
        yield from (healthy, used, util)
        gauges = {
            name: GaugeMetricFamily(name, doc, labels=["model"]) for name, doc in _DEPLOYMENT_GAUGES.items()
        }
        for d in self._deployments():
            for name, value in (
                ("harness_pool_deployment_replicas", d.replicas),
                ("harness_pool_deployment_ready_replicas", d.ready_replicas),
                ("harness_pool_deployment_last_load_seconds", d.last_load_time_s),
            ):
                gauges[name].add_metric([d.model], value)
        yield from gauges.values()


_DEPLOYMENT_GAUGES = {
    "harness_pool_deployment_replicas": "replicas wanted (max of the claims, or the autoscaler's target)",
    "harness_pool_deployment_ready_replicas": "replicas READY on healthy endpoints",
    "harness_pool_deployment_last_load_seconds": "duration of the deployment's latest model load",
}
