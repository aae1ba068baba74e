"""HTTP clients to engines, shared by the router's engine client and the pool's probes (both
aiohttp): what they take from the environment, as httpx did (TLS roots, proxies), an endpoint's
base URL, and the session options both keep (no cookies, bodies as sent, the proxy read once)."""

from __future__ import annotations

import functools
import os
import ssl
import urllib.request
import warnings
from collections.abc import Iterable

import aiohttp
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


def base_url(address: str) -> str:
    """An endpoint's address as the API's base URL: a scheme is added when missing (http), a
    trailing `/v1` is dropped (the paths carry it)."""
    url = address if "://" in address else f"http://{address}"
    return url.rstrip("/").removesuffix("/v1")


def plain_session(
    url: str,
    connector: aiohttp.BaseConnector,
    headers: Iterable[tuple[str, str]],
    timeout: aiohttp.ClientTimeout,
) -> aiohttp.ClientSession:
    """A session to the host of `url` that keeps no cookies (one session serves every caller),
    asks for bodies as sent and never decompresses them (byte bounds count what arrives), and
    goes through the environment's proxy for that URL, read now: aiohttp's own `trust_env` would
    read the environment and ~/.netrc in a thread on every request."""
    proxy = env_proxy(URL(url))
    with warnings.catch_warnings():
        # proxy_auth is deprecated for aiohttp 4; in 3.14 its replacement, proxy_headers, reaches
        # only an https endpoint's CONNECT, not a plain request through the proxy.
        warnings.simplefilter("ignore", DeprecationWarning)
        return aiohttp.ClientSession(
            connector=connector,
            headers={**dict(headers), "Accept-Encoding": "identity"},
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=timeout,
            auto_decompress=False,
            trust_env=False,
            proxy=proxy.with_user(None) if proxy else None,
            proxy_auth=aiohttp.BasicAuth.from_url(proxy) if proxy else None,
        )
