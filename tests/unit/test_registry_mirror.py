"""The router's registry copy applies Watch messages: parted snapshots swap in whole, deltas."""

from __future__ import annotations

import grpc
from harness.registry.v1 import registry_pb2 as pb

from services.common.registry_mirror import RegistryMirror

K = pb.EntityKind


def agent(name: str) -> pb.Change:
    return pb.Change(kind=K.ENTITY_KIND_AGENT, key=name, agent=pb.Agent(name=name, project="p"))


def rule(*values: str, deleted: bool = False) -> pb.Change:
    key = ", ".join(("p", *values))
    if deleted:
        return pb.Change(kind=K.ENTITY_KIND_POLICY, key=key, deleted=True)
    return pb.Change(kind=K.ENTITY_KIND_POLICY, key=key, policy=pb.PolicyRule(ptype="p", values=values))


async def test_a_snapshot_in_parts_replaces_the_copy_only_when_complete():
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never used: messages are applied directly
    mirror = RegistryMirror(channel)
    await mirror._apply(pb.WatchResponse(snapshot=True, changes=[agent("old")], revision=3))
    assert mirror.revision == 3 and set(mirror._agents) == {"old"}

    await mirror._apply(pb.WatchResponse(snapshot=True, changes=[agent("a")], revision=9, more=True))
    assert set(mirror._agents) == {"old"} and mirror.revision == 3  # half a snapshot is not served
    allow = ("agent:a", "p", "model:m", "invoke", "allow")
    await mirror._apply(pb.WatchResponse(snapshot=True, changes=[agent("b"), rule(*allow)], revision=9))
    assert set(mirror._agents) == {"a", "b"} and mirror.revision == 9
    assert (await mirror.check("agent:a", "p", "model:m", "invoke")).allowed

    await mirror._apply(pb.WatchResponse(changes=[rule(*allow, deleted=True)], revision=10))
    assert not (await mirror.check("agent:a", "p", "model:m", "invoke")).allowed
    await mirror._apply(pb.WatchResponse(changes=[], revision=10))  # keep-alive
    assert mirror.revision == 10
    await channel.close()


def user(name: str, rpm: int = 0, tpm: int = 0, deleted: bool = False) -> pb.Change:
    if deleted:
        return pb.Change(kind=K.ENTITY_KIND_USER, key=name, deleted=True)
    return pb.Change(kind=K.ENTITY_KIND_USER, key=name, user=pb.User(name=name, rpm_limit=rpm, tpm_limit=tpm))


async def test_users_and_their_limits_follow_snapshots_and_deltas():
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    mirror = RegistryMirror(channel)
    await mirror._apply(pb.WatchResponse(snapshot=True, changes=[user("alice", 5), user("gone")], revision=2))
    assert (await mirror.user("alice")).rpm_limit == 5
    assert await mirror.user("nobody") is None  # a JWT subject need not be registered

    await mirror._apply(pb.WatchResponse(changes=[user("alice", 7, 700), user("bob", tpm=9)], revision=4))
    alice = await mirror.user("alice")
    assert (alice.rpm_limit, alice.tpm_limit) == (7, 700) and (await mirror.user("bob")).tpm_limit == 9
    await mirror._apply(pb.WatchResponse(changes=[user("gone", deleted=True)], revision=5))
    assert await mirror.user("gone") is None

    # A parted snapshot replaces the users too, once complete.
    await mirror._apply(pb.WatchResponse(snapshot=True, changes=[user("carol", 1)], revision=8, more=True))
    assert await mirror.user("bob") is not None and await mirror.user("carol") is None
    await mirror._apply(pb.WatchResponse(snapshot=True, changes=[agent("a")], revision=8))
    assert await mirror.user("bob") is None and (await mirror.user("carol")).rpm_limit == 1
    await channel.close()


async def test_jwt_settings_changes_reach_listeners():
    from services.common.registry_mirror import JwtSettingsChange

    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    mirror = RegistryMirror(channel)
    seen = []
    mirror.subscribe(lambda e: seen.append(e) if isinstance(e, JwtSettingsChange) else None)
    settings = pb.JwtSettings(issuer="corp", audience="harness", public_key_pem="PEM")
    jwt = pb.Change(kind=K.ENTITY_KIND_JWT_SETTINGS, key="jwt", jwt_settings=settings)
    await mirror._apply(pb.WatchResponse(snapshot=True, changes=[jwt], revision=1))
    assert [e.settings.issuer for e in seen] == ["corp"] and mirror.jwt_settings.issuer == "corp"
    await mirror._apply(pb.WatchResponse(snapshot=True, changes=[jwt], revision=2))
    assert len(seen) == 1  # an unchanged snapshot says nothing
    await mirror._apply(
        pb.WatchResponse(
            changes=[pb.Change(kind=K.ENTITY_KIND_JWT_SETTINGS, key="jwt", deleted=True)], revision=3
        )
    )
    assert seen[-1].settings is None and mirror.jwt_settings is None
    await channel.close()
