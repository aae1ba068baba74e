"""Which URLs budget webhooks may target, and the POST that honours it (core code, no gRPC).

A webhook URL is checked when a budget is written (INVALID_ARGUMENT) and again at every delivery
(the name may resolve elsewhere by then):
- the scheme must be allowed (`schemes`, default https only);
- when `hosts` is set, the host must be one of them (`*.example.com` allows subdomains);
- the host is resolved and *every* address must be public: private, loopback, link-local,
  multicast, reserved and unspecified addresses (IPv4, IPv6, IPv4-mapped) are refused unless an
  entry of `allowed_networks` (CIDR) contains them, so a webhook cannot reach the cost service's
  own host, its network, or a cloud metadata endpoint;
- the POST connects to an address that passed the check (no second lookup a DNS rebinding could
  change), sends the original Host header (and, for https, verifies the certificate for the
  host name), and never follows a redirect: a 3xx is a failed attempt.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_RESPONSE_BYTES = 64 * 1024
MAX_URL = 2048
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(ValueError):
    """The URL may not be a webhook under the configured policy (never worth retrying)."""


def _public(ip: IpAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent


@dataclass(frozen=True)
class WebhookPolicy:
    schemes: tuple[str, ...] = ("https",)
    hosts: tuple[str, ...] = ()  # empty: any host whose addresses pass
    allowed_networks: tuple[str, ...] = ()  # CIDRs allowed although not public (an on-prem receiver)

    def __post_init__(self) -> None:
        bad = [s for s in self.schemes if s not in ("http", "https")]
        if bad or not self.schemes:
            raise ValueError(f"webhook schemes must be http and/or https, not {bad or 'none'}")
        for net in self.allowed_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(
                    f"webhook allowed network {net!r} is not a CIDR (e.g. 10.1.2.0/24)"
                ) from None

    def target(self, url: str) -> Target:
        """Checks what can be checked without DNS; raises WebhookRefused saying what to change."""
        if len(url) > MAX_URL:
            raise WebhookRefused(f"webhook_url is longer than {MAX_URL} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise WebhookRefused(f"webhook_url {url!r} is not a URL ({exc})") from None
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower().rstrip(".")
        if scheme not in self.schemes:
            raise WebhookRefused(
                f"webhook_url scheme {scheme or 'none'!r} is not allowed (allowed: {', '.join(self.schemes)})"
            )
        if not host:
            raise WebhookRefused(f"webhook_url {url!r} has no host")
        if parts.username or parts.password:
            raise WebhookRefused("webhook_url must not carry credentials (user:password@)")
        if self.hosts and not any(
            host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.hosts
        ):
            raise WebhookRefused(
                f"webhook host {host!r} is not in the allowed hosts ({', '.join(self.hosts)})"
            )
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Target(scheme, host, port or (443 if scheme == "https" else 80), path)

    def addresses(self, target: Target, resolve: Callable[..., list] = socket.getaddrinfo) -> list[str]:
        """Resolves the host (blocking) and returns its addresses if every one is allowed."""
        try:
            infos = resolve(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise WebhookRefused(f"webhook host {target.host!r} does not resolve ({exc})") from None
        found = list(dict.fromkeys(info[4][0] for info in infos))
        if not found:
            raise WebhookRefused(f"webhook host {target.host!r} has no address")
        for addr in found:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
            if not (_public(ip) or self._allowed_network(ip)):
                raise WebhookRefused(
                    f"webhook host {target.host!r} resolves to {ip}, a private, loopback, link-local or "
                    "reserved address (allow its network with --webhook-allow-network if it is meant)"
                )
        return found

    def _allowed_network(self, ip: IpAddress) -> bool:
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)

    def vet(self, url: str) -> None:
        """The write-time check (blocking: resolves the host)."""
        self.addresses(self.target(url))


def post_json(
    url: str, body: dict[str, Any], *, timeout_s: float, headers: dict[str, str], policy: WebhookPolicy
) -> None:
    """POSTs JSON to a vetted address of the URL's host; returns on 2xx, raises WebhookRefused when
    the policy refuses the URL, else OSError with a short reason. Blocking."""
    target = policy.target(url)
    address = policy.addresses(target)[0]
    if target.scheme == "https":
        conn: http.client.HTTPConnection = _PinnedHTTPS(target.host, target.port, address, timeout_s)
    else:
        conn = _PinnedHTTP(target.host, target.port, address, timeout_s)
    data = json.dumps(body).encode()
    try:
        conn.request("POST", target.path, body=data, headers={
            "Content-Type": "application/json", "User-Agent": "harness-cost-alerts", **headers,
        })  # fmt: skip
        resp = conn.getresponse()
        resp.read(MAX_RESPONSE_BYTES)
    except TimeoutError:
        raise OSError(f"no answer within {timeout_s:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise OSError(f"cannot reach the webhook: {exc}") from None
    finally:
        conn.close()
    if 300 <= resp.status < 400:
        raise OSError(f"HTTP {resp.status} {resp.reason}: redirects are not followed")
    if not 200 <= resp.status < 300:
        raise OSError(f"HTTP {resp.status} {resp.reason}")


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to `address` while naming `host` (Host header)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """Connects to `address`; TLS verifies the certificate for `host` (SNI too)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]
