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
