"""Every service that verifies user tokens follows the registry's JWT settings.

The registry holds the one place an admin sets how tokens are verified (issuer, audience, and
a key: a PEM public key, a JWKS URL or an OIDC discovery URL). While set, they replace the
service's own flags; removing them falls back to the flags. Routers and the pool already hold a
RegistryMirror; audit and cost open one for this when given the registry's address; the
registry applies its own stored settings.
"""

from __future__ import annotations

import logging

from harness.registry.v1 import registry_pb2

from services.common.config import TlsFiles
from services.common.identity import AuthConfig, Authenticator, JwtVerifier
from services.common.registry_mirror import JwtSettingsChange, RegistryMirror
from services.common.server import RunningServer, open_channel

log = logging.getLogger("harness.jwt_settings")


def verifier_for(settings: registry_pb2.JwtSettings | None, cfg: AuthConfig) -> JwtVerifier | None:
    """The verifier for the registry's settings, or the configured one when they are unset."""
    if settings is None:
        return JwtVerifier.from_config(cfg)
    return JwtVerifier.from_sources(
        cfg,
        issuer=settings.issuer,
        audience=settings.audience,
        public_key_pem=settings.public_key_pem.encode(),
        jwks_url=settings.jwks_url,
        discovery_url=settings.oidc_discovery_url,
    )


def describe(settings: registry_pb2.JwtSettings | None) -> str:
    if settings is None:
        return "from this service's flags"
    source = settings.oidc_discovery_url or settings.jwks_url or "a PEM public key"
    return f"from the registry (issuer {settings.issuer!r}, keys from {source})"


def apply_jwt_settings(
    authenticator: Authenticator, settings: registry_pb2.JwtSettings | None, cfg: AuthConfig
) -> None:
    """Swaps the authenticator's verifier; settings that cannot be used keep the current one."""
    try:
        verifier = verifier_for(settings, cfg)
    except ValueError as exc:  # the registry validates on write; a newer writer may know more
        log.error("JWT settings %s cannot be used (%s); keeping the previous ones", describe(settings), exc)
        return
    authenticator.set_jwt_verifier(verifier)
    log.info("JWT settings now %s", describe(settings))


def follow_jwt_settings(mirror: RegistryMirror, authenticator: Authenticator, cfg: AuthConfig) -> None:
    """Applies the registry's JWT settings each time they change (the mirror's first copy too)."""

    def on_change(event: object) -> None:
        if isinstance(event, JwtSettingsChange):
            apply_jwt_settings(authenticator, event.settings, cfg)

    mirror.subscribe(on_change)


def follow_registry_jwt_settings(running: RunningServer, registry_addr: str, tls: TlsFiles) -> RegistryMirror:
    """For services with no registry copy of their own (audit, cost): a watch of the registry
    used only for its JWT settings, closed when the server stops."""
    channel = open_channel(registry_addr, tls)
    mirror = RegistryMirror(channel)
    if running.authenticator is not None:
        follow_jwt_settings(mirror, running.authenticator, running.config.auth)
    mirror.start()

    async def close() -> None:
        await mirror.stop()
        await channel.close()

    running.on_stop(close)
    return mirror
