"""The stack's engine simulators: which models each loads, the protocol it speaks, and how the
pool and the simulator process are told about it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimulatorSpec:
    """One engine simulator instance: its pool endpoint name, the models it loads at start and
    the protocol it speaks (Triton's gRPC, or the OpenAI API as vLLM serves it)."""

    name: str
    models: tuple[str, ...]
    protocol: str = "triton"


# Different model sets, so the router's per-model endpoint choice is visible: the AWQ 8B runs on
# sim-0 and sim-1, the FP16 8B on sim-0 and sim-2, the 70B only on sim-1 (memory: 33+15, 15+63
# and 33 of 80 GB); the embedding model runs on sim-1 (1 GB more). sim-2 speaks the OpenAI API as vLLM does, so the demo's model is served by
# both kinds of engine and a request for it may fail over from one kind to the other.
DEFAULT_SIMULATORS: tuple[SimulatorSpec, ...] = (
    SimulatorSpec("sim-0", ("llama-3-8b-instruct", "llama-3-8b-instruct-awq")),
    SimulatorSpec("sim-1", ("llama-3-8b-instruct-awq", "llama-3-70b-instruct-awq", "all-minilm-l6-v2")),
    SimulatorSpec("sim-2", ("llama-3-8b-instruct",), protocol="openai"),
)


@dataclass(frozen=True)
class SimulatorInstance:
    spec: SimulatorSpec
    port: int
    metrics_port: int
    kv_events_port: int = 0  # 0: publishes no KV events
    kv_replay_port: int = 0

    @property
    def openai(self) -> bool:
        return self.spec.protocol == "openai"

    @property
    def address(self) -> str:
        """gRPC host:port, or the OpenAI API's base URL."""
        return f"http://127.0.0.1:{self.port}" if self.openai else f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The metrics the pool reads: vLLM's names on the API port for an OpenAI simulator."""
        return f"{self.address}/metrics" if self.openai else f"http://127.0.0.1:{self.metrics_port}/metrics"

    def endpoint_flag(self, gpu_type: str, memory_gb: float) -> str:
        """The pool's --endpoint value for this simulator."""
        kind = "kind=openai,flavour=vllm," if self.openai else ""
        labels = ""
        if self.kv_events_port:  # where routers find its KV events (precise prefix routing)
            labels = f",label.kv-events=tcp://127.0.0.1:{self.kv_events_port}"
            if self.kv_replay_port:
                labels += f",label.kv-events-replay=tcp://127.0.0.1:{self.kv_replay_port}"
        return (
            f"name={self.spec.name},{kind}address={self.address},metrics={self.metrics_url},"
            f"gpu_type={gpu_type},gpus=1,memory_gb={memory_gb:g}{labels}"
        )

    def argv(self, time_scale: float, memory_gb: float) -> list[str]:
        """`python -m services.enginesim` arguments: an OpenAI simulator serves its API on `port`."""
        ports = ["--protocol", "openai", "--openai-port", str(self.port), "--port", "0"] if self.openai else [
            "--port", str(self.port)]  # fmt: skip
        kv = []
        if self.kv_events_port:
            kv = ["--kv-events-port", str(self.kv_events_port), "--kv-events-pod", self.spec.name]
            if self.kv_replay_port:
                kv += ["--kv-events-replay-port", str(self.kv_replay_port)]
        return [
            "--host", "127.0.0.1", *ports, "--metrics-port", str(self.metrics_port), "--time-scale", str(time_scale),
            "--gpu-memory-gb", str(memory_gb), *kv, "--no-preload", "--load", *self.spec.models,
        ]  # fmt: skip
