"""Authentication: who the agent is (client certificate) and who the end user is (JWT or API key).

Agents: Envoy terminates mTLS and forwards the client certificate's URI SAN in
`x-forwarded-client-cert` (XFCC) with SANITIZE_SET, so the header can be trusted only on
connections whose own peer certificate is Envoy's. Services calling each other directly are
identified by their own certificate. Users: a JWT in `authorization: Bearer ...` (signed by a
configured RSA key or by a key of an OIDC issuer's JWKS, services/common/jwks.py), or an
API key (`hk_...`) resolved by an `ApiKeyResolver` (the registry), sent as `x-api-key` or as the
bearer token (where OpenAI clients put `api_key`). The same rules serve gRPC and HTTP callers:
each protocol hands over the peer's certificate identities and its headers.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
from cryptography import x509

from services.common.context import AGENT_BY_KEY, BOUND_AGENT, Identity, refuse_bad_lineage
from services.common.errors import Unauthenticated
from services.common.jwks import JwksKeys, KeySource, SigningKey, StaticKey
from services.common.xfcc import XfccError, agent_from_xfcc, is_valid_name

XFCC_KEY = "x-forwarded-client-cert"
API_KEY_KEY = "x-api-key"
MAX_TOKEN_CHARS = 16 * 1024
API_KEY_PREFIX = "hk_"  # every registry-issued secret starts so; a JWT never does
# Headers that say who calls: each at most once (two would leave the choice to whichever layer
# reads them: HTTP servers keep the first, gRPC metadata dicts the last, a proxy may join them).
CREDENTIAL_HEADERS = ("authorization", API_KEY_KEY, XFCC_KEY)


def refuse_repeated_credentials(headers: Iterable[tuple[str, object]]) -> None:
    """Unauthenticated when a credential header (lower-case names) comes more than once."""
    seen: set[str] = set()
    for name, _ in headers:
        if name in CREDENTIAL_HEADERS:
            if name in seen:
                raise Unauthenticated(f"the {name} header is sent more than once: send it once")
            seen.add(name)


def refuse_bad_headers(headers: Sequence[tuple[str, object]]) -> None:
    """What every door checks in a request's headers before anything else: a credential header
    sent twice (Unauthenticated), a session or step id that is not a lineage id (InvalidArgument)."""
    refuse_repeated_credentials(headers)
    refuse_bad_lineage(headers)


@dataclass(frozen=True)
class AuthConfig:
    """How a service authenticates callers."""

    trust_domain: str = "harness.local"
    # SPIFFE ids of proxies whose XFCC header is trusted (Envoy's own certificate).
    trusted_proxies: tuple[str, ...] = ("spiffe://harness.local/envoy",)
    # Trust XFCC on plaintext connections. Only for tests and single-host dev without TLS.
    trust_xfcc_without_tls: bool = False
    jwt_public_key_path: str = ""
    jwt_issuer: str = "harness"
    jwt_audience: str = "harness"
    jwt_leeway_s: int = 30
    # An OIDC issuer's keys instead of a key file: its JWKS URL, or its discovery document.
    jwt_jwks_url: str = ""
    jwt_oidc_discovery_url: str = ""
    jwks_cache_ttl_s: float = 300.0  # refetch the key set this often (in the background)
    jwks_min_refresh_s: float = 30.0  # at most one fetch this often, even for unknown kids

    def agent_prefix(self) -> str:
        return f"spiffe://{self.trust_domain}/agent/"

    def service_prefix(self) -> str:
        return f"spiffe://{self.trust_domain}/service/"


# Resolves an API key secret to an Identity (user, roles, project) or raises Unauthenticated.
ApiKeyResolver = Callable[[str], Awaitable[Identity]]


def peer_spiffe_ids(context: grpc.aio.ServicerContext) -> tuple[str, ...]:
    """URI SANs of the direct peer's TLS certificate (empty on plaintext connections)."""
    return _peer_certificate(context)[1]


def _peer_certificate(context: grpc.aio.ServicerContext) -> tuple[bool, tuple[str, ...]]:
    """Whether the peer presented a TLS certificate, and its URI SANs (one read of the call's
    auth context, which grpc builds anew on each read)."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    return bool(pems), (_uri_sans(pems[0]) if pems else ())


def peer_spiffe_ids_der(der: bytes | None) -> tuple[str, ...]:
    """URI SANs of a peer certificate in DER form (what an `ssl` socket gives)."""
    return _uri_sans(ssl.DER_cert_to_PEM_cert(der).encode()) if der else ()


@functools.lru_cache(maxsize=1024)
def _uri_sans(pem: bytes) -> tuple[str, ...]:
    # Peers are few (Envoy, sibling services) and reconnect rarely: parse each cert once.
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.UniformResourceIdentifier))


class JwtVerifier:
    """Verifies user tokens: the signature (one configured RSA key, or the issuer's JWKS key the
    token's `kid` names), issuer, audience and expiry."""

    def __init__(self, keys: bytes | KeySource, issuer: str, audience: str, leeway_s: int = 30) -> None:
        self._keys: KeySource = StaticKey(keys) if isinstance(keys, bytes) else keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s
        # Agents resend the same token on every call; a signature check per call costs ~0.1 ms.
        # Entries are only served before the token's own expiry, and while its key is current.
        self._verified: dict[bytes, tuple[float, Identity, str]] = {}

    @classmethod
    def from_sources(
        cls,
        cfg: AuthConfig,
        *,
        issuer: str,
        audience: str,
        public_key_pem: bytes = b"",
        jwks_url: str = "",
        discovery_url: str = "",
    ) -> JwtVerifier:
        """A verifier for exactly one key source (PEM key, JWKS URL or OIDC discovery URL)."""
        if sum(map(bool, (public_key_pem, jwks_url, discovery_url))) != 1:
            raise ValueError(
                "JWT keys need exactly one of a public key, a JWKS URL and an OIDC discovery URL"
            )
        if public_key_pem:
            return cls(public_key_pem, issuer, audience, cfg.jwt_leeway_s)
        keys = JwksKeys(
            issuer=issuer,
            jwks_url=jwks_url,
            discovery_url=discovery_url,
            cache_ttl_s=cfg.jwks_cache_ttl_s,
            min_refresh_s=cfg.jwks_min_refresh_s,
        )
        return cls(keys, issuer, audience, cfg.jwt_leeway_s)

    @classmethod
    def from_config(cls, cfg: AuthConfig) -> JwtVerifier | None:
        """From the service's flags; None when no key source is configured."""
        if not (cfg.jwt_public_key_path or cfg.jwt_jwks_url or cfg.jwt_oidc_discovery_url):
            return None
        pem = Path(cfg.jwt_public_key_path).read_bytes() if cfg.jwt_public_key_path else b""
        return cls.from_sources(
            cfg,
            issuer=cfg.jwt_issuer,
            audience=cfg.jwt_audience,
            public_key_pem=pem,
            jwks_url=cfg.jwt_jwks_url,
            discovery_url=cfg.jwt_oidc_discovery_url,
        )

    async def verify(self, token: str) -> Identity:
        digest = hashlib.sha256(token.encode()).digest()  # keys stay 32 bytes, whatever the token
        hit = self._verified.get(digest)
        if hit is not None and hit[0] > time.time() and self._keys.knows(hit[2]):
            return hit[1]
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(f"bearer token is {len(token)} characters; at most {MAX_TOKEN_CHARS}")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"bearer token rejected: {exc}") from exc
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("bearer token rejected: its 'kid' header is not a string")
        key = await self._keys.key_for(kid)
        identity = self._decode(token, key)
        if len(self._verified) >= 10_000:
            self._verified.clear()
        self._verified[digest] = (float(identity.claims["exp"]) + self._leeway, identity, key.kid)
        return identity

    def _decode(self, token: str, key: SigningKey) -> Identity:
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["sub", "exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("bearer token has expired; obtain a new one") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"bearer token rejected: {exc}") from exc
        roles = claims.get("roles") or []
        if not isinstance(roles, list):
            roles = [str(roles)]
        return Identity(
            user=str(claims["sub"]), auth_method="jwt", roles=tuple(map(str, roles)), claims=claims
        )


def mint_jwt(
    private_key_pem: bytes,
    subject: str,
    *,
    issuer: str = "harness",
    audience: str = "harness",
    roles: tuple[str, ...] = (),
    ttl_s: int = 12 * 3600,
) -> str:
    """Signs a user token (used by the local stack for demo users, and by tests)."""
    now = int(time.time())
    claims = {"sub": subject, "iss": issuer, "aud": audience, "iat": now, "exp": now + ttl_s}
    if roles:
        claims["roles"] = list(roles)
    return jwt.encode(claims, private_key_pem, algorithm="RS256")


class Authenticator:
    """Turns a call's connection and metadata into an Identity.

    A credential that is present but wrong is an error (UNAUTHENTICATED); absent credentials give
    an identity without a user, and each RPC decides what it requires.
    """

    def __init__(
        self,
        cfg: AuthConfig,
        jwt_verifier: JwtVerifier | None = None,
        api_key_resolver: ApiKeyResolver | None = None,
    ) -> None:
        self._cfg = cfg
        self._jwt = jwt_verifier
        self._api_keys = api_key_resolver

    def set_jwt_verifier(self, verifier: JwtVerifier | None) -> None:
        """Swaps the JWT settings (issuer, audience, key) in place, e.g. after the registry's
        settings changed: the next call is verified with the new ones."""
        self._jwt = verifier

    def is_proxy(self, peer_ids: tuple[str, ...], tls: bool) -> bool:
        """Whether this peer is the proxy whose XFCC header is trusted (Envoy)."""
        return any(pid in self._cfg.trusted_proxies for pid in peer_ids) or (
            not tls and self._cfg.trust_xfcc_without_tls
        )

    async def authenticate(self, context: grpc.aio.ServicerContext, md: Mapping[str, str]) -> Identity:
        has_cert, peer_ids = _peer_certificate(context)
        tls = bool(peer_ids) or has_cert
        return await self.authenticate_peer(peer_ids, tls, md)

    async def authenticate_peer(
        self, peer_ids: tuple[str, ...], tls: bool, md: Mapping[str, str]
    ) -> Identity:
        """The identity of a call from a peer with these certificate URI SANs (none on a
        plaintext connection, `tls` False) and these lower-case headers."""
        agent, agent_id, service = self._caller(peer_ids, tls, md)
        user = await self._user(md)
        claims = user.claims
        bound = user.claims.get(BOUND_AGENT, "") if user.auth_method == "api_key" else ""
        if bound:  # an agent-bound key acts only as its agent
            if service or (agent and agent != bound):
                caller = f"agent {agent!r}" if agent else f"service {service!r}"
                raise Unauthenticated(
                    f"this API key is bound to agent {bound!r} and cannot act for {caller} (the client "
                    "certificate); use a key of that agent, or none bound"
                )
            if not agent:  # no certificate (a server-TLS listener): the key names the agent
                agent, claims = bound, {**claims, AGENT_BY_KEY: True}
        return Identity(
            agent=agent,
            agent_spiffe_id=agent_id,
            service=service,
            user=user.user,
            auth_method=user.auth_method,
            roles=user.roles,
            project=user.project,
            claims=claims,
        )

    async def _user(self, md: Mapping[str, str]) -> Identity:
        auth = md.get("authorization", "")
        if auth:
            scheme, _, token = auth.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("authorization must be 'Bearer <jwt or API key>'")
            if "," in token:  # neither a JWT nor an API key has one: a proxy joined two headers
                raise Unauthenticated("authorization holds more than one credential: send one bearer token")
            if token.startswith(API_KEY_PREFIX):
                return await self._api_key(token)
            if self._jwt is None:
                raise Unauthenticated("this service does not accept bearer tokens (no JWT key configured)")
            return await self._jwt.verify(token)
        if md.get(API_KEY_KEY):
            return await self._api_key(md[API_KEY_KEY])
        return Identity()

    async def _api_key(self, secret: str) -> Identity:
        if self._api_keys is None:
            raise Unauthenticated("this service does not accept API keys")
        return await self._api_keys(secret)

    def _caller(self, peer_ids: tuple[str, ...], tls: bool, md: Mapping[str, str]) -> tuple[str, str, str]:
        """(agent, agent SPIFFE id, service) from the peer certificate and, behind Envoy, XFCC."""
        prefix = self._cfg.agent_prefix()
        if self.is_proxy(peer_ids, tls):
            header = md.get(XFCC_KEY, "")
            try:
                agent_id = agent_from_xfcc(header, prefix) if header else ""
            except XfccError as exc:
                raise Unauthenticated(f"client certificate identity refused: {exc}") from exc
            return (agent_id[len(prefix) :], agent_id, "") if agent_id else ("", "", "")
        service_prefix = self._cfg.service_prefix()
        for pid in peer_ids:
            if pid.startswith(service_prefix):
                return "", "", pid[len(service_prefix) :]
        # An agent connecting directly with its own cert (no proxy): the same rule, one agent URI.
        agent_ids = [pid for pid in peer_ids if pid.startswith(prefix)]
        if len(agent_ids) > 1 or (agent_ids and not is_valid_name(agent_ids[0][len(prefix) :])):
            raise Unauthenticated("client certificate identity refused: not exactly one valid agent URI SAN")
        return (agent_ids[0][len(prefix) :], agent_ids[0], "") if agent_ids else ("", "", "")
