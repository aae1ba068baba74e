"""The router's HTTP client to OpenAI-protocol engines (openai_engine.py, openai_embed.py): one
pooled `aiohttp.ClientSession` per endpoint address.

aiohttp, not httpx: the same streamed completion costs the client about a third of httpx's CPU.
It speaks HTTP/1.1 only, as vLLM, SGLang, TGI, Ollama and Triton's OpenAI frontend serve it.
What each session keeps from the httpx client it replaced:
- keep-alive connections, at most `max_connections` per endpoint, idle ones closed after 30 s
  (aiohttp has no separate cap on idle connections: httpx kept at most 64); host names are
  resolved once per 10 s (aiohttp's DNS cache), not per new connection;
- no redirects followed (a 3xx is an engine error, as before) and no cookies kept: one session
  serves every agent and user, so a cookie one caller's response set must never ride on
  another's request;
- the endpoint's headers (e.g. an API key) and TLS: `ca_file`'s roots, else SSL_CERT_FILE or
  SSL_CERT_DIR when set, else certifi's bundle (httpx's defaults);
- a proxy from HTTP_PROXY / HTTPS_PROXY / ALL_PROXY unless NO_PROXY covers the host, read once
  when the endpoint's session opens (httpx read them when its client was built); only http://
  proxies, as aiohttp supports. aiohttp's own `trust_env` is off: it reads the environment and
  ~/.netrc in a thread on every request;
- bodies as sent: `Accept-Encoding: identity` and no decompression, so the byte bounds on
  answers count what arrives and a compressed body cannot expand past them; an engine that
  compresses anyway is refused (`check_identity`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp
from yarl import URL

from services.common.errors import Unavailable
from services.common.http_env import base_url, default_tls, plain_session
from services.router.engine_access import EndpointAccess

CONNECT_TIMEOUT_S = 5.0
KEEPALIVE_S = 30.0
NO_CALL_LIMIT = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
# aiohttp's names for what failed, as the engine's errors have named them (log searches, tests).
_FAILURE_NAMES = (
    (aiohttp.ConnectionTimeoutError, "ConnectTimeout"),
    (aiohttp.SocketTimeoutError, "ReadTimeout"),
    (aiohttp.ClientConnectorError, "ConnectError"),
)


@dataclass(frozen=True)
class EngineSession:
    """One endpoint's pooled session and its routes, parsed once."""

    session: aiohttp.ClientSession
    completions: URL
    embeddings: URL


def open_session(address: str, access: EndpointAccess, max_connections: int) -> EngineSession:
    """A session for one endpoint; call it on the event loop that will use it."""
    base = base_url(address)
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_S,
        ssl=ssl.create_default_context(cafile=access.ca_file) if access.ca_file else default_tls(),
    )
    session = plain_session(base, connector, access.headers, NO_CALL_LIMIT)
    return EngineSession(session, URL(f"{base}/v1/completions"), URL(f"{base}/v1/embeddings"))


def call_timeout(timeout: float | None) -> aiohttp.ClientTimeout:
    """A call's limits, as httpx's Timeout(timeout, connect=...) set them: waiting for a pooled
    connection, and each read, at most `timeout`; opening a connection at most CONNECT_TIMEOUT_S.
    None: no limit but the connect's."""
    if not timeout:
        return NO_CALL_LIMIT
    return aiohttp.ClientTimeout(
        total=None, connect=timeout, sock_connect=min(CONNECT_TIMEOUT_S, timeout), sock_read=timeout
    )


def failure(exc: BaseException) -> str:
    """What went wrong with a call, for the Unavailable it becomes."""
    name = next((n for kind, n in _FAILURE_NAMES if isinstance(exc, kind)), type(exc).__name__)
    return f"{name}: {exc}"


def check_identity(address: str, response: aiohttp.ClientResponse) -> None:
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", ""):
        raise Unavailable(
            f"backend {address} answered with Content-Encoding {encoding!r}; the router asks for identity"
        )
