"""Where user tokens' signing keys come from: one configured public key, or an OIDC issuer's JWKS.

An identity provider publishes its signing keys as a JSON Web Key Set, found directly (a JWKS
URL) or through its discovery document (``<issuer>/.well-known/openid-configuration``, whose
``issuer`` must be the configured one and whose ``jwks_uri`` names the set). Tokens name their
key by ``kid``. Keys rotate: a new key appears in the set before tokens use it, an old one
leaves after its tokens expire. So the set is cached and refreshed in the background after
`cache_ttl_s`; a token naming an unknown ``kid`` triggers a refresh at once, but at most one per
`min_refresh_s` (a flood of made-up kids cannot hammer the provider). Fetches run in a worker
thread with a timeout, never on the event loop; answers are bounded in size and key count.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from services.common.errors import Unauthenticated, Unavailable

log = logging.getLogger("harness.jwks")

# Asymmetric only: a symmetric (HS*) key in a public set would let anyone who read it sign.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_KEYS = 64
MAX_URL_CHARS = 2048
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
DISCOVERY_PATH = "/.well-known/openid-configuration"


class JwksError(Exception):
    """The provider's discovery document or key set could not be fetched or used."""


@dataclass(frozen=True)
class SigningKey:
    key: Any  # a cryptography public key
    algorithm: str
    kid: str


class KeySource(Protocol):
    async def key_for(self, kid: str | None) -> SigningKey: ...

    def knows(self, kid: str) -> bool:
        """Whether `kid` is still a current key (a cached verification is dropped otherwise)."""
        ...


def check_url(url: str, what: str) -> str:
    """An https URL (plain http only to a loopback host, for local providers and tests)."""
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"{what} is {len(url)} characters; at most {MAX_URL_CHARS}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return url
    raise ValueError(
        f"{what} {url[:200]!r} must be an https:// URL (http:// only to localhost): keys fetched "
        "in the clear could be swapped on the way"
    )


class StaticKey:
    """One RSA public key (PEM), for tokens minted by the Harness itself or a key file."""

    def __init__(self, public_key_pem: bytes) -> None:
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, RSAPublicKey):
            raise ValueError("the JWT public key must be an RSA key: these tokens are RS256")
        self._key = SigningKey(key, "RS256", "")

    async def key_for(self, kid: str | None) -> SigningKey:
        return self._key

    def knows(self, kid: str) -> bool:
        return True


def fetch_json(url: str, timeout_s: float) -> dict:
    """GET `url` as JSON, at most MAX_DOCUMENT_BYTES; blocking (callers use a worker thread)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            body = resp.read(MAX_DOCUMENT_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise JwksError(f"GET {url} failed: {exc}") from exc
    if len(body) > MAX_DOCUMENT_BYTES:
        raise JwksError(f"GET {url}: the answer is over {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise JwksError(f"GET {url}: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise JwksError(f"GET {url}: not a JSON object")
    return doc


def parse_jwks(doc: dict) -> dict[str, SigningKey]:
    """Usable signing keys by kid ("" for a key without one); others are skipped."""
    raw = doc.get("keys")
    if not isinstance(raw, list):
        raise JwksError("the key set has no 'keys' list")
    if len(raw) > MAX_KEYS:
        raise JwksError(f"the key set holds {len(raw)} keys; at most {MAX_KEYS}")
    keys: dict[str, SigningKey] = {}
    for entry in raw:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue  # a key type this verifier does not use
        if jwk.algorithm_name not in ALGORITHMS:
            continue
        kid = entry.get("kid", "")
        keys[kid if isinstance(kid, str) else ""] = SigningKey(jwk.key, jwk.algorithm_name, str(kid))
    if not keys:
        raise JwksError(f"the key set holds no usable signing key ({', '.join(ALGORITHMS)})")
    return keys


class JwksKeys:
    """An issuer's signing keys by kid, from its JWKS URL or its OIDC discovery document."""

    def __init__(
        self,
        *,
        issuer: str,
        jwks_url: str = "",
        discovery_url: str = "",
        cache_ttl_s: float = 300.0,
        min_refresh_s: float = 30.0,
        timeout_s: float = 5.0,
        fetch: Callable[[str, float], dict] = fetch_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bool(jwks_url) == bool(discovery_url):
            raise ValueError("give exactly one of a JWKS URL and an OIDC discovery URL")
        self._issuer = issuer
        self._discovery_url = check_url(discovery_url, "OIDC discovery URL") if discovery_url else ""
        self._jwks_url = check_url(jwks_url, "JWKS URL") if jwks_url else ""
        self._ttl, self._min_refresh, self._timeout = cache_ttl_s, min_refresh_s, timeout_s
        self._fetch, self._clock = fetch, clock
        self._keys: dict[str, SigningKey] | None = None
        self._loaded_at = 0.0
        self._tried_at: float | None = None
        self._last_error = ""
        self._lock = asyncio.Lock()
        self._background: asyncio.Task | None = None
        self.fetches = 0  # JWKS fetches attempted (tests, logs)

    def knows(self, kid: str) -> bool:
        return self._keys is not None and kid in self._keys

    async def key_for(self, kid: str | None) -> SigningKey:
        if self._keys is None:
            await self._refresh()
        elif self._clock() - self._loaded_at >= self._ttl:
            self._refresh_in_background()
        key = self._lookup(kid)
        if key is None and self._keys is not None:
            await self._refresh()  # a new key the cached set lacks (rate limited)
            key = self._lookup(kid)
        if key is not None:
            return key
        if self._keys is None:
            raise Unavailable(f"the identity provider's signing keys cannot be fetched: {self._last_error}")
        raise Unauthenticated(
            f"bearer token is signed with key {kid!r}, which the issuer {self._issuer!r} does not publish"
            if kid
            else "bearer token has no 'kid' header and the issuer publishes several keys"
        )

    def _lookup(self, kid: str | None) -> SigningKey | None:
        if self._keys is None:
            return None
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _refresh_in_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self._refresh(), name="jwks-refresh")

    async def _refresh(self) -> None:
        """Fetches the set unless another fetch ran within `min_refresh_s` (one at a time)."""
        async with self._lock:
            now = self._clock()
            if self._tried_at is not None and now - self._tried_at < self._min_refresh:
                return
            self._tried_at = now
            self.fetches += 1
            try:
                keys = await asyncio.wait_for(asyncio.to_thread(self._load), self._timeout * 2 + 1)
            except (JwksError, TimeoutError) as exc:
                self._last_error = str(exc) or "timed out"
                log.warning("JWKS refresh for issuer %r failed: %s", self._issuer, self._last_error)
                return
            if self._keys is None or keys.keys() != self._keys.keys():
                log.info("JWKS of issuer %r: keys %s", self._issuer, sorted(keys))
            self._keys, self._loaded_at, self._last_error = keys, self._clock(), ""

    def _load(self) -> dict[str, SigningKey]:
        """Runs in a worker thread: discovery (when configured), then the key set."""
        jwks_url = self._jwks_url
        if self._discovery_url:
            doc = self._fetch(self._discovery_url, self._timeout)
            if doc.get("issuer") != self._issuer:
                raise JwksError(
                    f"the discovery document names issuer {str(doc.get('issuer'))[:200]!r}, not "
                    f"{self._issuer!r}; set the issuer the provider uses"
                )
            try:
                jwks_url = check_url(str(doc.get("jwks_uri") or ""), "jwks_uri")
            except ValueError as exc:
                raise JwksError(str(exc)) from exc
        return parse_jwks(self._fetch(jwks_url, self._timeout))

    async def aclose(self) -> None:
        if self._background is not None:
            self._background.cancel()
