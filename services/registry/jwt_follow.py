"""The registry verifies user tokens with the JWT settings it stores, like every other service.

At start it applies the stored settings (the flags when none are stored), then follows the change
log through its own watch hub, so a change made on another registry replica applies here too.
"""

from __future__ import annotations

import asyncio
import logging

from services.common.errors import NotFound
from services.common.identity import AuthConfig, Authenticator
from services.common.jwt_settings import apply_jwt_settings
from services.registry import convert as c
from services.registry.store import Store
from services.registry.watch import WatchHub

log = logging.getLogger("harness.registry.jwt")


async def apply_stored(store: Store, authenticator: Authenticator, cfg: AuthConfig) -> None:
    try:
        settings = c.jwt_pb(await asyncio.to_thread(store.get_jwt_settings))
    except NotFound:
        settings = None
    apply_jwt_settings(authenticator, settings, cfg)


async def follow_stored_jwt_settings(
    hub: WatchHub, store: Store, authenticator: Authenticator, cfg: AuthConfig
) -> None:
    """Runs until cancelled (the registry stops); a failed read is logged and retried."""
    while True:
        try:
            _, head = await asyncio.to_thread(store.change_window)
            await apply_stored(store, authenticator, cfg)
            async for batch in hub.watch(head):
                if batch.snapshot or any(change.kind == "jwt" for change in batch.changes):
                    await apply_stored(store, authenticator, cfg)
            return  # the hub shut down
        except Exception:
            log.exception("following the stored JWT settings failed; retrying")
            await asyncio.sleep(1.0)
