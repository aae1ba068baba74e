"""Helpers for integration tests that call Harness servers over real channels."""

from __future__ import annotations

from services.common.identity import XFCC_KEY


def agent_metadata(agent: str, token: str | None = None, trust_domain: str = "harness.local"):
    """Metadata an agent's call carries after Envoy: XFCC with its SPIFFE id, and a user token.

    Only valid against servers started with AuthConfig(trust_xfcc_without_tls=True).
    """
    md = [(XFCC_KEY, f"By=spiffe://{trust_domain}/envoy;URI=spiffe://{trust_domain}/agent/{agent}")]
    if token:
        md.append(("authorization", f"Bearer {token}"))
    return tuple(md)


def user_metadata(token: str):
    return (("authorization", f"Bearer {token}"),)
