"""The pool's frozen configuration, from a YAML file and/or flags (HARNESS_POOL_* env fallbacks).

Endpoints known at start come from the file's `endpoints:` list and from repeated
`--endpoint name=sim-0,address=127.0.0.1:8001,metrics=http://127.0.0.1:8002/metrics,
gpu_type=H100-80GB,gpus=1,memory_gb=80,label.zone=a` flags (a flag wins over a file entry
of the same name). `header.K=V` (repeatable), `tls=true` and `ca=PATH` say how the pool
reaches that engine (YAML: `headers: {K: V}`, `tls: true`, `ca: PATH`); see access.py. More can be added at run time with RegisterEndpoint.

Models the pool may deploy (catalog name, Triton name, GiB per loaded copy; see catalog.py)
come from `models:` and repeated `--model name=llama-3-8b,triton_model=llama-3-8b-instruct,
memory_gb=33` flags.

YAML:
    probe_interval_s: 0.5
    unhealthy_after: 2
    headroom: 0.05            # fraction of each GPU kept free by placement
    agent_idle_ttl_s: 600     # warm-up claims (agent online) scale to zero after this idle time
    model_idle_ttl_s:         # per model, in place of agent_idle_ttl_s (0 = never to zero)
      {llama-3-70b: 300, llama-3-8b: 0}
    load_timeout_s: 600
    max_replicas: 8           # AdviseScaling's ceiling per model
    autoscale:                # the scaling loop (autoscale.py); interval_s 0 = off
      {interval_s: 5, up_after_s: 5, down_after_s: 120, cooldown_s: 30, down_share: 0.8}
    models:
      - {name: llama-3-8b, triton_model: llama-3-8b-instruct, memory_gb: 33}
    endpoints:
      - {name: sim-0, address: "127.0.0.1:8001", metrics: "http://127.0.0.1:8002/metrics",
         gpu_type: H100-80GB, gpus: 1, memory_gb: 80, labels: {zone: a}}
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from services.common.config import env
from services.common.errors import InvalidArgument
from services.pool.access import EngineAccess, access_from_mapping
from services.pool.autoscale import AutoscaleSettings
from services.pool.catalog import ModelSpec, model_from_mapping, parse_model_flag
from services.pool.deployment_types import MAX_IDLE_TTL_S
from services.pool.state import GIB, EndpointSpec, validate_spec

_ENDPOINT_KEYS = {
    "name", "address", "metrics", "metrics_url", "gpu_type", "gpus", "memory_gb", "labels", "kind", "flavour",
}  # fmt: skip
_ACCESS_KEYS = {"headers", "tls", "ca"}  # how the pool reaches the engine (access.py)


@dataclass(frozen=True)
class PoolConfig:
    endpoints: tuple[EndpointSpec, ...] = ()
    # (address, headers/TLS) for engines that need them; kept out of the endpoint table.
    engine_access: tuple[tuple[str, EngineAccess], ...] = ()
    probe_interval_s: float = 0.5
    probe_timeout_s: float = 0.5  # deadline of each gRPC probe call
    metrics_timeout_s: float = 1.0  # HTTP timeout of a metrics scrape
    unhealthy_after: int = 2  # consecutive failed gRPC probes before UNHEALTHY
    nvml: bool = True  # try NVML (a host without it is fine either way)
    nvml_endpoint: str = ""  # the endpoint whose GPUs NVML sees ("" = list them under the pool host)
    models: tuple[ModelSpec, ...] = ()  # what Deploy may place, and each model's footprint
    headroom: float = 0.05  # fraction of every GPU placement leaves free (lagging figures, growth)
    load_timeout_s: float = 600.0  # deadline of one RepositoryModelLoad (a 70B cold start is minutes)
    agent_idle_ttl_s: float = 600.0  # idle TTL of the claims agent warm-up makes; 0 = never
    # Per model (catalog or Triton name): the idle TTL of agent warm-up claims on it, in place
    # of agent_idle_ttl_s (e.g. a batch model scales to zero, a realtime one never: 0).
    model_idle_ttl_s: tuple[tuple[str, float], ...] = ()
    idle_check_interval_s: float = 1.0  # how often idle deployments are looked for
    max_replicas: int = 8  # AdviseScaling never goes above this per model
    autoscale: AutoscaleSettings = field(default_factory=AutoscaleSettings)  # interval 0: on request only
    registry_addr: str = ""  # follow the registry (agent warm-up, model table); "" = config only
    audit_addr: str = ""  # where admin changes are shipped (ADMIN_CHANGE events); "" = not audited
    db_url: str = ""  # where deployment claims persist (SQLAlchemy URL); "" = memory only

    def __post_init__(self) -> None:
        if self.probe_interval_s <= 0 or self.probe_timeout_s <= 0 or self.metrics_timeout_s <= 0:
            raise ValueError("probe interval and timeouts must be > 0")
        if self.unhealthy_after < 1:
            raise ValueError("unhealthy_after must be >= 1")
        if not 0 <= self.headroom < 1:
            raise ValueError("headroom must be in [0, 1)")
        if self.load_timeout_s <= 0 or self.idle_check_interval_s <= 0 or self.agent_idle_ttl_s < 0:
            raise ValueError("load timeout and idle check interval must be > 0, agent idle TTL >= 0")
        if self.max_replicas < 1:
            raise ValueError("max_replicas must be >= 1")
        for model, ttl in self.model_idle_ttl_s:
            if not 0 <= ttl <= MAX_IDLE_TTL_S:
                raise ValueError(f"model_idle_ttl_s of {model!r} must be in [0, {MAX_IDLE_TTL_S}], got {ttl}")
        models = [m.name for m in self.models]
        if len(models) != len(set(models)):
            raise ValueError(f"duplicate model names in {models}")
        names = [e.name for e in self.endpoints]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate endpoint names in {names}")


def endpoint_from_mapping(raw: Mapping[str, object]) -> EndpointSpec:
    """One endpoint from a YAML mapping or a parsed --endpoint flag; ValueError when bad."""
    unknown = set(raw) - _ENDPOINT_KEYS - _ACCESS_KEYS
    if unknown:
        known = sorted(_ENDPOINT_KEYS | _ACCESS_KEYS)
        raise ValueError(f"unknown endpoint keys {sorted(unknown)} (known: {known})")
    try:
        labels = raw.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise ValueError("labels must be a mapping")
        spec = EndpointSpec.make(
            str(raw.get("name", "")),
            str(raw.get("address", "")),
            labels={str(k): str(v) for k, v in labels.items()},
            metrics_url=str(raw.get("metrics", raw.get("metrics_url", "")) or ""),
            gpu_type=str(raw.get("gpu_type", "") or ""),
            gpu_count=int(raw.get("gpus", 0) or 0),  # type: ignore[arg-type]
            gpu_memory_bytes=int(float(raw.get("memory_gb", 0) or 0) * GIB),  # type: ignore[arg-type]
            kind=str(raw.get("kind", "") or "triton"),
            flavour=str(raw.get("flavour", "") or ""),
        )
        return validate_spec(spec)
    except InvalidArgument as exc:
        raise ValueError(exc.message) from exc


def parse_endpoint_flag(text: str) -> EndpointSpec:
    """`name=sim-0,address=host:port,metrics=URL,gpu_type=T,gpus=1,memory_gb=80,label.k=v`
    (an OpenAI-protocol server: `kind=openai,flavour=vllm,address=http://host:8000`)
    (and `header.K=V`, `tls=true`, `ca=PATH`: see :func:`endpoint_flag_mapping`)."""
    return endpoint_from_mapping(endpoint_flag_mapping(text))


def endpoint_flag_mapping(text: str) -> dict[str, object]:
    """The --endpoint flag as the mapping a YAML entry would be (`label.k`, `header.k` grouped)."""
    raw: dict[str, object] = {}
    groups: dict[str, dict[str, str]] = {"label.": {}, "header.": {}}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--endpoint: expected key=value, got {part!r}")
        prefix = next((p for p in groups if key.startswith(p)), None)
        if prefix is not None:
            groups[prefix][key[len(prefix) :]] = value
        else:
            raw[key] = value
    for prefix, key in (("label.", "labels"), ("header.", "headers")):
        if groups[prefix]:
            raw[key] = groups[prefix]
    return raw


def load_file(path: str | Path) -> dict:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def add_pool_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pool")
    g.add_argument("--config", default=env("POOL_CONFIG"), help="YAML file (endpoints, probe settings)")
    g.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="K=V,...",
        help="an endpoint to probe from the start (repeatable); see services/pool/config.py",
    )
    g.add_argument("--probe-interval", type=float, default=None, help="seconds between probes (0.5)")
    g.add_argument("--probe-timeout", type=float, default=None, help="gRPC probe deadline, s (0.5)")
    g.add_argument("--unhealthy-after", type=int, default=None, help="failed probes in a row (2)")
    g.add_argument("--no-nvml", action="store_true", help="do not try NVML")
    g.add_argument("--nvml-endpoint", default=None, help="endpoint whose GPUs NVML sees")
    g.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="K=V,...",
        help="a deployable model: name=N,triton_model=T,memory_gb=G (repeatable); see services/pool/catalog.py",
    )
    g.add_argument("--headroom", type=float, default=None, help="GPU fraction placement keeps free (0.05)")
    g.add_argument("--agent-idle-ttl", type=float, default=None, help="idle TTL of agent warm-up, s (600)")
    g.add_argument(
        "--autoscale-interval",
        type=float,
        default=None,
        help="seconds between scaling-loop evaluations (0: off, advice only on request; default 0)",
    )
    g.add_argument(
        "--db-url",
        default=env("POOL_DB", ""),
        help="SQLAlchemy URL where deployment claims persist across restarts (default: memory only)",
    )
    g.add_argument(
        "--registry",
        default=env("REGISTRY_ADDR", ""),
        help="registry address: agents going online get their models loaded; models follow its catalog",
    )
    g.add_argument(
        "--audit",
        default=env("AUDIT_ADDR", ""),
        help="audit service address: every endpoint, deployment and scaling change is shipped there",
    )


def pool_config_from_args(args: argparse.Namespace) -> PoolConfig:
    """File values, then flags on top. Raises ValueError with a readable message."""
    data = load_file(args.config) if args.config else {}
    endpoints: dict[str, tuple[EndpointSpec, EngineAccess]] = {}
    entries = list(data.get("endpoints") or [])
    for raw in [*entries, *(endpoint_flag_mapping(flag) for flag in args.endpoint)]:
        if not isinstance(raw, Mapping):
            raise ValueError("each entry of endpoints: must be a mapping")
        spec = endpoint_from_mapping(raw)
        endpoints[spec.name] = (spec, access_from_mapping(raw))  # a flag replaces a file entry
    access: dict[str, EngineAccess] = {}
    for spec, how in endpoints.values():
        if access.setdefault(spec.address, how) != how:  # access is looked up by address
            raise ValueError(f"endpoints at {spec.address} are given different headers or TLS settings")

    models: dict[str, ModelSpec] = {}
    for raw in data.get("models") or []:
        if not isinstance(raw, Mapping):
            raise ValueError("each entry of models: must be a mapping")
        model = model_from_mapping(raw)
        models[model.name] = model
    for flag in args.model:
        model = parse_model_flag(flag)
        models[model.name] = model

    def pick(flag_value, key: str, default, cast):
        return cast(flag_value if flag_value is not None else data.get(key, default))

    return PoolConfig(
        endpoints=tuple(spec for spec, _ in endpoints.values()),
        engine_access=tuple((a, x) for a, x in access.items() if x != EngineAccess()),
        probe_interval_s=pick(args.probe_interval, "probe_interval_s", 0.5, float),
        probe_timeout_s=pick(args.probe_timeout, "probe_timeout_s", 0.5, float),
        metrics_timeout_s=float(data.get("metrics_timeout_s", 1.0)),
        unhealthy_after=pick(args.unhealthy_after, "unhealthy_after", 2, int),
        nvml=not args.no_nvml and bool(data.get("nvml", True)),
        nvml_endpoint=pick(args.nvml_endpoint, "nvml_endpoint", "", str),
        models=tuple(models.values()),
        headroom=pick(args.headroom, "headroom", 0.05, float),
        load_timeout_s=float(data.get("load_timeout_s", 600.0)),
        agent_idle_ttl_s=pick(args.agent_idle_ttl, "agent_idle_ttl_s", 600.0, float),
        model_idle_ttl_s=model_idle_ttls(data.get("model_idle_ttl_s") or {}),
        idle_check_interval_s=float(data.get("idle_check_interval_s", 1.0)),
        max_replicas=int(data.get("max_replicas", 8)),
        autoscale=autoscale_settings(data.get("autoscale") or {}, args.autoscale_interval),
        registry_addr=args.registry or str(data.get("registry_addr", "")),
        audit_addr=args.audit or str(data.get("audit_addr", "")),
        db_url=args.db_url or str(data.get("db_url", "")),
    )


def model_idle_ttls(raw: object) -> tuple[tuple[str, float], ...]:
    """The `model_idle_ttl_s:` mapping (model -> seconds); ValueError when bad."""
    if not isinstance(raw, Mapping):
        raise ValueError("model_idle_ttl_s: must be a mapping of model name to seconds")
    return tuple((str(k), float(v)) for k, v in raw.items())


def autoscale_settings(raw: object, interval_flag: float | None) -> AutoscaleSettings:
    """The `autoscale:` mapping, the --autoscale-interval flag on top; ValueError when bad."""
    if not isinstance(raw, Mapping):
        raise ValueError("autoscale: must be a mapping")
    unknown = set(raw) - {"interval_s", "up_after_s", "down_after_s", "cooldown_s", "down_share"}
    if unknown:
        raise ValueError(f"unknown autoscale keys {sorted(unknown)}")
    values = {k: float(v) for k, v in raw.items()}
    if interval_flag is not None:
        values["interval_s"] = interval_flag
    return AutoscaleSettings(**values)
