"""How the pool reaches one engine: extra gRPC headers (a Triton with a restricted protocol
wants e.g. `triton-grpc-protocol-<key>: <value>`) and TLS to the engine.

These are pool-side settings from its config (`--endpoint ...,header.K=V,tls=true,ca=PATH`
or YAML `headers:`/`tls:`/`ca:`). They are secrets, so they live beside the endpoint table,
never in it: ListEndpoints and WatchEndpoints do not carry them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

MAX_HEADERS = 16
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class EngineAccess:
    headers: tuple[tuple[str, str], ...] = ()
    tls: bool = False
    ca_file: str = ""  # PEM roots for TLS ("" = the system's)

    def channel(self, address: str, options: list | None = None) -> grpc.aio.Channel:
        if not self.tls:
            return grpc.aio.insecure_channel(address, options=options)
        roots = Path(self.ca_file).read_bytes() if self.ca_file else None
        return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(roots), options=options)


NO_ACCESS = EngineAccess()


def access_from_mapping(raw: Mapping[str, object]) -> EngineAccess:
    """`headers` (mapping), `tls` (bool) and `ca` (path) of one endpoint entry; ValueError when bad."""
    headers = raw.get("headers") or {}
    if not isinstance(headers, Mapping) or len(headers) > MAX_HEADERS:
        raise ValueError(f"headers must be a mapping of at most {MAX_HEADERS} entries")
    pairs = tuple(sorted((str(k).lower(), str(v)) for k, v in headers.items()))
    for key, value in pairs:
        if not key or not all(c.isalnum() or c in "-_." for c in key) or key.startswith(":"):
            raise ValueError(f"header name {key!r}: letters, digits, '-', '_' and '.' only")
        if key.endswith("-bin") or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value) or len(value) > 4096:
            raise ValueError(f"header {key!r}: value must be printable ASCII, at most 4096 characters")
    tls = str(raw.get("tls", "")).lower() in _TRUE
    ca = str(raw.get("ca", "") or "")
    if ca and not Path(ca).is_file():
        raise ValueError(f"ca {ca!r} is not a readable file")
    if ca and not tls:
        raise ValueError("ca is given but tls is not on")
    return EngineAccess(pairs, tls, ca)
