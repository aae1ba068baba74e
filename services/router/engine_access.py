"""How the router reaches one engine endpoint (`--engine-access`): extra headers and TLS, for
the OpenAI HTTP engine and the Triton gRPC engine alike."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EndpointAccess:
    """How to reach one engine endpoint: extra headers (an OpenAI server's authorization, a
    restricted Triton's `triton-grpc-protocol-<key>`) and TLS: an https URL, or `tls` for a
    Triton's gRPC address; `ca_file` is the PEM roots to verify it with ("" = the system's)."""

    headers: tuple[tuple[str, str], ...] = ()
    ca_file: str = ""
    tls: bool = False  # Triton gRPC only (an OpenAI endpoint's scheme says it)


NO_ACCESS = EndpointAccess()
MAX_HEADERS = 16
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


_GRPC_ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
ACCESS_FORM = (
    "expected BASE_URL (an OpenAI server) or HOST:PORT (a Triton), then header.K=V, ca=PATH, tls=true"
)


def parse_engine_access(text: str) -> tuple[str, EndpointAccess]:
    """One `--engine-access ADDRESS,header.K=V,...[,ca=PATH][,tls=true]`: the endpoint's address
    as the pool reports it (an OpenAI base URL or a Triton's HOST:PORT), and how to reach it.
    ValueError says what is wrong."""
    address, *options = [p.strip() for p in text.split(",")]
    grpc_address = bool(_GRPC_ADDRESS.match(address))
    if not address.startswith(("http://", "https://")) and not grpc_address:
        raise ValueError(f"--engine-access {text!r}: {ACCESS_FORM}")
    headers: list[tuple[str, str]] = []
    ca, tls = "", address.startswith("https://")
    for option in options:
        key, sep, value = option.partition("=")
        if key == "tls" and sep and grpc_address:
            tls = value.lower() in ("1", "true", "yes", "on")
        elif key == "ca" and sep:
            if not Path(value).is_file():
                raise ValueError(f"--engine-access {address}: ca {value!r} is not a readable file")
            ca = value
        elif key.startswith("header.") and sep:
            name = key.removeprefix("header.").lower()
            if (
                not _HEADER_NAME.match(name)
                or len(value) > 4096
                or not value.isascii()
                or not value.isprintable()
                or (grpc_address and name.endswith("-bin"))
            ):
                raise ValueError(
                    f"--engine-access {address}: header {name!r} needs a token name and a printable value"
                )
            headers.append((name, value))
        else:
            raise ValueError(
                f"--engine-access {address}: option {option!r} is not header.K=V, ca=PATH"
                + (" or tls=true" if grpc_address else "")
            )
    if ca and not tls:
        raise ValueError(f"--engine-access {address}: ca is for TLS endpoints (https, or tls=true)")
    if len(headers) > MAX_HEADERS:
        raise ValueError(f"--engine-access {address}: at most {MAX_HEADERS} headers")
    return address, EndpointAccess(tuple(headers), ca, tls and grpc_address)
