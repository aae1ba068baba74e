"""`harness up --openai-engine NAME=URL[,flavour=vllm][,header=K:V][,metrics=URL]`: the user's
own OpenAI-compatible servers (vLLM, SGLang, TGI, Ollama, Triton's OpenAI frontend) in the
local stack, registered with the pool as fixed deployments and reached by the routers.

`flavour` (default vllm) says how the pool probes the server and reads its load; `metrics`
defaults to URL/metrics for vllm, sglang and tgi (Ollama has none; Triton's frontend serves
Triton's metrics on its own port). `header=K:V` (repeatable) goes with every call, the pool's
probes and the routers' requests alike (e.g. `header=authorization:Bearer KEY` for vLLM's
--api-key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
FLAVOURS = ("vllm", "sglang", "tgi", "ollama", "triton-openai")
METRICS_ON_API_PORT = ("vllm", "sglang", "tgi")
MAX_ENGINES = 32
FORM = "expected NAME=URL[,flavour=vllm|sglang|tgi|ollama|triton-openai][,header=K:V][,metrics=URL]"


@dataclass(frozen=True)
class OpenAIServer:
    name: str
    url: str
    flavour: str = "vllm"
    metrics_url: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    def endpoint_flag(self) -> str:
        """The pool's --endpoint value for this server."""
        parts = [f"name={self.name}", "kind=openai", f"flavour={self.flavour}", f"address={self.url}"]
        if self.metrics_url:
            parts.append(f"metrics={self.metrics_url}")
        parts += [f"header.{k}={v}" for k, v in self.headers]
        return ",".join(parts)

    def router_flag(self) -> str:
        """The routers' --engine-access value ("" when there is nothing to send)."""
        if not self.headers:
            return ""
        return ",".join([self.url, *(f"header.{k}={v}" for k, v in self.headers)])


def parse_openai_engine_flag(text: str) -> OpenAIServer:
    first, *options = [p.strip() for p in text.split(",")]
    name, sep, url = first.partition("=")
    if not sep or not _NAME.match(name) or not re.match(r"^https?://[^\s/,]+(/v1)?/?$", url):
        raise ValueError(f"--openai-engine {text!r}: {FORM}")
    url = url.rstrip("/").removesuffix("/v1")
    flavour, metrics, headers = "vllm", "", []
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not value:
            raise ValueError(f"--openai-engine {name}: option {option!r} is not key=value ({FORM})")
        if key == "flavour":
            if value not in FLAVOURS:
                raise ValueError(f"--openai-engine {name}: flavour must be one of {', '.join(FLAVOURS)}")
            flavour = value
        elif key == "metrics":
            if not value.startswith(("http://", "https://")):
                raise ValueError(f"--openai-engine {name}: metrics must be an http(s) URL, got {value!r}")
            metrics = value
        elif key == "header":
            hk, colon, hv = value.partition(":")
            if not colon or not hk.strip():
                raise ValueError(f"--openai-engine {name}: header {value!r} is not K:V")
            headers.append((hk.strip().lower(), hv.strip()))
        else:
            raise ValueError(f"--openai-engine {name}: unknown option {key!r} (flavour, header, metrics)")
    if not metrics and flavour in METRICS_ON_API_PORT:
        metrics = f"{url}/metrics"
    return OpenAIServer(name, url, flavour, metrics, tuple(headers))


def parse_openai_engine_flags(values: list[str]) -> tuple[OpenAIServer, ...]:
    servers = tuple(parse_openai_engine_flag(v) for v in values)
    if len(servers) > MAX_ENGINES:
        raise ValueError(f"at most {MAX_ENGINES} --openai-engine servers")
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise ValueError(f"--openai-engine names must be unique, got {names}")
    return servers
