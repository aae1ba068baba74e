"""`harness up --triton NAME=HOST:PORT[,metrics=URL][,header=K:V]...`: the user's own Triton
servers in the local stack, registered with the pool in place of (or, with
`--with-simulators`, beside) the engine simulators.

Options after the address: `metrics=URL` (Triton's :8002/metrics, for load figures and idle
detection), `header=K:V` (repeatable; sent on every call to that server, the pool's and the
routers', e.g. the access token of a restricted protocol), `tls=true` and `ca=PATH` (gRPC over
TLS, verified with those roots), `gpu_type=T` and `memory_gb=N` (what placement assumes when
the server reports no GPU figures).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
MAX_TRITONS = 32


@dataclass(frozen=True)
class TritonServer:
    name: str
    address: str
    metrics_url: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    gpu_type: str = ""
    memory_gb: float = 0.0
    tls: bool = False
    ca_file: str = ""

    def router_flag(self) -> str:
        """The routers' --engine-access value ("" when plain gRPC without headers will do)."""
        if not self.headers and not self.tls:
            return ""
        parts = [self.address, *(f"header.{k}={v}" for k, v in self.headers)]
        if self.tls:
            parts += ["tls=true", *([f"ca={self.ca_file}"] if self.ca_file else [])]
        return ",".join(parts)

    def endpoint_flag(self) -> str:
        """The pool's --endpoint value for this server."""
        parts = [f"name={self.name}", f"address={self.address}"]
        if self.metrics_url:
            parts.append(f"metrics={self.metrics_url}")
        if self.gpu_type:
            parts.append(f"gpu_type={self.gpu_type}")
        if self.memory_gb:
            parts += ["gpus=1", f"memory_gb={self.memory_gb:g}"]
        parts += [f"header.{k}={v}" for k, v in self.headers]
        if self.tls:
            parts += ["tls=true", *([f"ca={self.ca_file}"] if self.ca_file else [])]
        return ",".join(parts)


def parse_triton_flag(text: str) -> TritonServer:
    """One --triton value; ValueError with what is wrong and the expected form."""
    form = "expected NAME=HOST:PORT[,metrics=URL][,header=K:V]...[,tls=true[,ca=PATH]]"
    first, *options = [p.strip() for p in text.split(",")]
    name, sep, address = first.partition("=")
    if not sep or not _NAME.match(name) or not _ADDRESS.match(address):
        raise ValueError(f"--triton {text!r}: {form}")
    fields: dict[str, object] = {}
    headers: list[tuple[str, str]] = []
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not value:
            raise ValueError(f"--triton {name}: option {option!r} is not key=value ({form})")
        if key == "header":
            hk, colon, hv = value.partition(":")
            if not colon or not hk.strip():
                raise ValueError(f"--triton {name}: header {value!r} is not K:V")
            headers.append((hk.strip().lower(), hv.strip()))
        elif key == "metrics":
            if not value.startswith(("http://", "https://")):
                raise ValueError(f"--triton {name}: metrics must be an http(s) URL, got {value!r}")
            fields["metrics_url"] = value
        elif key == "tls":
            fields["tls"] = value.lower() in ("1", "true", "yes", "on")
        elif key == "ca":
            if not Path(value).is_file():
                raise ValueError(f"--triton {name}: ca {value!r} is not a readable file")
            fields["ca_file"] = str(Path(value).resolve())
        elif key == "gpu_type":
            fields["gpu_type"] = value
        elif key == "memory_gb":
            try:
                fields["memory_gb"] = float(value)
            except ValueError:
                raise ValueError(f"--triton {name}: memory_gb must be a number, got {value!r}") from None
        else:
            raise ValueError(
                f"--triton {name}: unknown option {key!r} (metrics, header, tls, ca, gpu_type, memory_gb)"
            )
    if fields.get("ca_file") and not fields.get("tls"):
        raise ValueError(f"--triton {name}: ca is for tls=true")
    return TritonServer(name, address, headers=tuple(headers), **fields)  # type: ignore[arg-type]


def parse_triton_flags(values: list[str]) -> tuple[TritonServer, ...]:
    servers = tuple(parse_triton_flag(v) for v in values)
    if len(servers) > MAX_TRITONS:
        raise ValueError(f"at most {MAX_TRITONS} --triton servers")
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise ValueError(f"--triton names must be unique, got {names}")
    return servers
