"""Each agent's targets and limits from the router's registry copy, as Prometheus gauges, so
alert rules and dashboards compare what an agent gets with what it was promised:

- `harness_router_agent_ttft_target_seconds{agent,slo_class}`: the agent's SLO TTFT target.
- `harness_router_agent_rpm_limit{agent}` / `harness_router_agent_tpm_limit{agent}`: its
  requests- and tokens-per-minute limits (agents without a limit export no series).

One series per registered agent: the set is the registry's, never a caller's input.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.registry_mirror import RegistryMirror
from services.router.flow import SloClass


class AgentTargetsCollector(Collector):
    def __init__(self, mirror: RegistryMirror) -> None:
        self._mirror = mirror

    def collect(self) -> Iterable[Metric]:
        ttft = GaugeMetricFamily(
            "harness_router_agent_ttft_target_seconds",
            "The agent's SLO time-to-first-token target",
            labels=["agent", "slo_class"],
        )
        rpm = GaugeMetricFamily(
            "harness_router_agent_rpm_limit", "Requests per minute allowed", labels=["agent"]
        )
        tpm = GaugeMetricFamily(
            "harness_router_agent_tpm_limit", "Tokens per minute allowed", labels=["agent"]
        )
        for agent in self._mirror.agents_now():
            if agent.slo.ttft_ms > 0:
                slo = SloClass.from_proto(agent.slo.slo_class).name.lower()
                ttft.add_metric([agent.name, slo], agent.slo.ttft_ms / 1000)
            if agent.rpm_limit > 0:
                rpm.add_metric([agent.name], agent.rpm_limit)
            if agent.tpm_limit > 0:
                tpm.add_metric([agent.name], agent.tpm_limit)
        yield from (ttft, rpm, tpm)


def register_agent_metrics(registry: CollectorRegistry, mirror: RegistryMirror) -> None:
    registry.register(AgentTargetsCollector(mirror))
