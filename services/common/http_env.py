"""What an HTTP client to an engine takes from the environment, as httpx did: TLS roots and
proxies. Shared by the router's engine client and the pool's probes (both aiohttp)."""

from __future__ import annotations

import functools
import os
import ssl
import urllib.request

import certifi
from yarl import URL


@functools.cache
def default_tls() -> ssl.SSLContext:
    """httpx's verify=True: SSL_CERT_FILE or SSL_CERT_DIR when set, else certifi's roots."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())


def env_proxy(url: URL) -> URL | None:
    """The proxy the environment names for `url` (its scheme's, else ALL_PROXY), unless NO_PROXY
    covers its host."""
    if url.host and urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies()
    found = proxies.get(url.scheme) or proxies.get("all")
    return URL(found) if found else None
