"""User tokens verified against an OIDC issuer's JWKS served by a real local HTTP server.

Keys rotate on the server during the tests: an old kid works until the issuer drops it, a new
kid is picked up by a refresh, an unknown kid refreshes at most once per interval, and issuer
and audience are checked. The clock that paces refreshes is the test's, so nothing here waits
on wall time; the fetches themselves are real HTTP.
"""

from __future__ import annotations

import asyncio
import base64

import jwt
import pytest

from services.common.errors import Unauthenticated, Unavailable
from services.common.identity import AuthConfig, JwtVerifier
from services.common.jwks import JwksKeys, check_url
from tests.helpers.jwks_server import IdpKey, JwksServer

TTL, MIN_REFRESH = 300.0, 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def k1() -> IdpKey:
    return IdpKey.rsa("k1")


@pytest.fixture(scope="module")
def k2() -> IdpKey:
    return IdpKey.ec("k2")


@pytest.fixture
def idp():
    server = JwksServer()
    yield server
    server.close()


def verifier(idp: JwksServer, clock: Clock, *, discovery: bool = False, timeout_s: float = 5.0):
    keys = JwksKeys(
        issuer=idp.issuer,
        jwks_url="" if discovery else idp.jwks_url,
        discovery_url=idp.discovery_url if discovery else "",
        cache_ttl_s=TTL,
        min_refresh_s=MIN_REFRESH,
        timeout_s=timeout_s,
        clock=clock,
    )
    return JwtVerifier(keys, idp.issuer, "harness", leeway_s=0), keys


async def settle(keys: JwksKeys) -> None:
    """Waits for a background refresh the last call started, if any."""
    if keys._background is not None:
        await asyncio.gather(keys._background, return_exceptions=True)


async def test_rotation_old_kid_until_removed_new_kid_by_refresh(idp, k1, k2):
    clock = Clock()
    idp.publish(k1)
    v, keys = verifier(idp, clock)
    old_token = k1.mint("alice", issuer=idp.issuer)
    assert (await v.verify(old_token)).user == "alice"
    assert keys.fetches == 1 and idp.hits["/jwks"] == 1

    # The issuer starts rotating: both keys published, new tokens signed by k2 (an EC key).
    idp.publish(k1, k2)
    clock.now += MIN_REFRESH
    assert (await v.verify(k2.mint("bob", issuer=idp.issuer))).user == "bob"  # unknown kid: refetched
    assert keys.fetches == 2
    assert (await v.verify(k1.mint("carol", issuer=idp.issuer))).user == "carol"  # old kid still good
    assert keys.fetches == 2  # known kids need no fetch

    # k1 leaves the set; after the cache's lifetime a background refresh notices.
    idp.publish(k2)
    clock.now += TTL
    assert (await v.verify(k2.mint("dave", issuer=idp.issuer))).user == "dave"  # served while it refreshes
    await settle(keys)
    assert keys.fetches == 3 and not keys.knows("k1")
    with pytest.raises(Unauthenticated, match=r"key .k1., which the issuer .* does not publish"):
        await v.verify(k1.mint("erin", issuer=idp.issuer))
    with pytest.raises(Unauthenticated, match="k1"):  # a token verified earlier is not served from the cache
        await v.verify(old_token)


async def test_unknown_kid_refreshes_at_most_once_per_interval(idp, k1):
    clock = Clock()
    idp.publish(k1)
    v, keys = verifier(idp, clock)
    await v.verify(k1.mint("alice", issuer=idp.issuer))
    clock.now += MIN_REFRESH
    for i in range(20):  # made-up kids, e.g. from an attacker
        with pytest.raises(Unauthenticated, match=f"ghost-{i}"):
            await v.verify(k1.mint("mallory", issuer=idp.issuer, kid=f"ghost-{i}"))
    assert keys.fetches == 2 and idp.hits["/jwks"] == 2  # one refresh for all twenty
    clock.now += MIN_REFRESH - 1
    with pytest.raises(Unauthenticated):
        await v.verify(k1.mint("mallory", issuer=idp.issuer, kid="ghost-x"))
    assert idp.hits["/jwks"] == 2
    clock.now += 1
    with pytest.raises(Unauthenticated):
        await v.verify(k1.mint("mallory", issuer=idp.issuer, kid="ghost-y"))
    assert idp.hits["/jwks"] == 3  # the next interval allows one more


async def test_issuer_audience_signature_and_algorithm_are_checked(idp, k1, k2):
    clock = Clock()
    idp.publish(k1)
    v, _ = verifier(idp, clock)
    with pytest.raises(Unauthenticated, match="issuer"):
        await v.verify(k1.mint("alice", issuer="https://someone-else.example"))
    with pytest.raises(Unauthenticated, match=r"(?i)audience"):
        await v.verify(k1.mint("alice", issuer=idp.issuer, audience="another-app"))
    with pytest.raises(Unauthenticated, match="expired"):
        await v.verify(k1.mint("alice", issuer=idp.issuer, ttl_s=-60))
    forged = k2.mint("alice", issuer=idp.issuer, kid="k1")  # k1's kid, another key's signature
    with pytest.raises(Unauthenticated, match="rejected"):
        await v.verify(forged)
    # A symmetric key in the set is never used: a token signed with its secret is refused.
    secret = b"0123456789abcdef0123456789abcdef"
    k = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    idp.keys = [*idp.keys, {"kty": "oct", "kid": "shared", "k": k, "alg": "HS256"}]
    clock.now += MIN_REFRESH
    claims = {"sub": "x", "iss": idp.issuer, "aud": "harness", "exp": 2**31}
    hs = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "shared"})
    with pytest.raises(Unauthenticated, match="does not publish"):
        await v.verify(hs)


async def test_discovery_document_names_the_key_set_and_must_name_the_issuer(idp, k1):
    clock = Clock()
    idp.publish(k1)
    v, _ = verifier(idp, clock, discovery=True)
    assert (await v.verify(k1.mint("alice", issuer=idp.issuer))).user == "alice"
    assert idp.hits["/.well-known/openid-configuration"] == 1 and idp.hits["/jwks"] == 1

    idp.issuer_override = "https://impostor.example"
    v, _ = verifier(idp, Clock(), discovery=True)
    with pytest.raises(Unavailable, match=r"names issuer .https://impostor\.example."):
        await v.verify(k1.mint("alice", issuer=idp.issuer))


async def test_fetching_keys_never_blocks_the_event_loop_and_is_bounded_in_time(idp, k1):
    idp.publish(k1)
    idp.delay_s = 1.0
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        v, _ = verifier(idp, Clock())
        assert (await v.verify(k1.mint("alice", issuer=idp.issuer))).user == "alice"
        assert ticks >= 5, "the event loop stood still while the keys were fetched"
        slow, _ = verifier(idp, Clock(), timeout_s=0.2)  # the provider answers after 1 s
        with pytest.raises(Unavailable, match="cannot be fetched"):
            await slow.verify(k1.mint("alice", issuer=idp.issuer))
    finally:
        task.cancel()


def test_key_urls_must_be_https_except_to_localhost():
    assert check_url("https://idp.example/jwks", "x")
    assert check_url("http://127.0.0.1:8080/jwks", "x") and check_url("http://localhost/jwks", "x")
    for bad in (
        "http://idp.example/jwks",
        "ftp://idp.example/jwks",
        "https:///nohost",
        "https://a/" + "x" * 3000,
    ):
        with pytest.raises(ValueError):
            check_url(bad, "x")


def test_flags_take_exactly_one_key_source(idp):
    cfg = AuthConfig(jwt_jwks_url=idp.jwks_url, jwt_oidc_discovery_url=idp.discovery_url)
    with pytest.raises(ValueError, match="exactly one"):
        JwtVerifier.from_config(cfg)
    assert JwtVerifier.from_config(AuthConfig(jwt_jwks_url=idp.jwks_url)) is not None
    assert JwtVerifier.from_config(AuthConfig()) is None
