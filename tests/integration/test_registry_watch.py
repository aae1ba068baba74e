"""Registry Watch and JWT settings over real gRPC, on SQLite and PostgreSQL; resuming after the
registry process is killed (SIGKILL) mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from pathlib import Path

import grpc
import pytest
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb
from harness.registry.v1.registry_pb2_grpc import RegistryStub

from services.registry import domain as d
from services.registry.seed import seed_registry
from services.registry.store import Store
from services.registry.watch import WatchHub
from tests.helpers.grpc import user_metadata
from tests.helpers.registry_server import start_registry
from tests.integration.test_registry_server import DEMO

REPO_ROOT = Path(__file__).resolve().parents[2]
ONLINE, DRAINING, OFFLINE = (
    common_pb2.AGENT_STATE_ONLINE,
    common_pb2.AGENT_STATE_DRAINING,
    common_pb2.AGENT_STATE_OFFLINE,
)


class Watcher:
    """Collects a Watch stream's messages in the background."""

    def __init__(self, stub: RegistryStub, since: int, metadata) -> None:
        self.call = stub.Watch(pb.WatchRequest(since_revision=since), metadata=metadata)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for msg in self.call:
                self.queue.put_nowait(msg)
        except grpc.aio.AioRpcError as exc:
            self.queue.put_nowait(exc)

    async def next(self, timeout: float = 20.0) -> pb.WatchResponse:
        msg = await asyncio.wait_for(self.queue.get(), timeout)
        if isinstance(msg, Exception):
            raise msg
        return msg

    async def until(self, revision: int) -> list[pb.Change]:
        """Deltas up to `revision` (asserting none of them is a snapshot)."""
        out: list[pb.Change] = []
        while not out or out[-1].revision < revision:
            msg = await self.next()
            assert not msg.snapshot
            out += msg.changes
        return out

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def served(test_auth, db_url, mint_token):
    store = Store(db_url)
    # Other replicas' writes are polled for once a minute here: a change that arrives sooner
    # was pushed by the write itself.
    running = await start_registry(store, test_auth, hub=WatchHub(store, poll_s=60.0))
    admin = user_metadata(mint_token("alice", "admin"))
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = RegistryStub(channel)
        await seed_registry(stub, DEMO, admin)
        yield stub, store, admin
    await running.stop(0)
    store.close()


async def test_snapshot_then_live_deltas_over_grpc(served, jwt_keypair, mint_token):
    stub, store, admin = served
    watcher = Watcher(stub, 0, admin)
    try:
        snap = await watcher.next()
        assert snap.snapshot and not snap.more and snap.revision == store.last_revision()
        by_kind = {}
        for ch in snap.changes:
            by_kind.setdefault(pb.EntityKind.Name(ch.kind), []).append(ch.key)
            assert ch.revision == snap.revision and ch.WhichOneof("entity")
        assert by_kind["ENTITY_KIND_AGENT"] == ["demo-agent"] and by_kind["ENTITY_KIND_TOOL"] == ["ledger@1"]
        assert len(by_kind["ENTITY_KIND_POLICY"]) == 4 and len(by_kind["ENTITY_KIND_USER"]) == 3
        agent = next(ch.agent for ch in snap.changes if ch.HasField("agent"))
        assert agent.state == ONLINE and agent.versions[0].models == ["llama-3-8b"]

        await stub.SetAgentState(pb.SetAgentStateRequest(agent="demo-agent", state=DRAINING), metadata=admin)
        msg = await watcher.next(timeout=10)  # own writes wake watchers: no polling
        (ch,) = msg.changes
        assert (ch.kind, ch.key, ch.agent.state, msg.snapshot) == (
            pb.ENTITY_KIND_AGENT,
            "demo-agent",
            DRAINING,
            False,
        )

        deny = pb.PolicyRule(ptype="p", values=["user:mallory", "ledger", "agent:*", "invoke", "deny"])
        await stub.AddPolicy(pb.AddPolicyRequest(rule=deny), metadata=admin)
        await stub.RemovePolicy(pb.RemovePolicyRequest(rule=deny), metadata=admin)
        added, removed = await watcher.until(store.last_revision())
        assert (added.kind, list(added.policy.values), added.deleted) == (
            pb.ENTITY_KIND_POLICY,
            deny.values,
            False,
        )
        assert (removed.key, removed.deleted, removed.WhichOneof("entity")) == (added.key, True, None)

        pem = jwt_keypair[0].read_text()
        settings = pb.JwtSettings(issuer="harness", audience="harness", public_key_pem=pem)
        await stub.SetJwtSettings(pb.SetJwtSettingsRequest(settings=settings), metadata=admin)
        (ch,) = await watcher.until(store.last_revision())
        assert ch.kind == pb.ENTITY_KIND_JWT_SETTINGS and ch.jwt_settings.public_key_pem == pem
    finally:
        await watcher.close()


async def test_user_limits_set_by_admin_shown_and_watched(served):
    stub, store, admin = served
    held = store.last_revision()
    watcher = Watcher(stub, held, admin)
    try:
        assert not (await watcher.next()).changes  # current
        got = await stub.SetUserLimits(
            pb.SetUserLimitsRequest(user="bob", rpm_limit=60, tpm_limit=6000), metadata=admin
        )
        assert (got.user.name, got.user.rpm_limit, got.user.tpm_limit) == ("bob", 60, 6000)
        (ch,) = await watcher.until(store.last_revision())
        assert (ch.kind, ch.key, ch.user.rpm_limit, ch.user.tpm_limit) == (
            pb.ENTITY_KIND_USER,
            "bob",
            60,
            6000,
        )
        user = (await stub.GetUser(pb.GetUserRequest(name="bob"), metadata=admin)).user
        assert (user.rpm_limit, user.tpm_limit, user.team) == (60, 6000, got.user.team)
        listed = (await stub.ListUsers(pb.ListUsersRequest(), metadata=admin)).users
        assert {u.name: u.rpm_limit for u in listed}["bob"] == 60

        # Setting the same limits again is a no-op (idempotent): no new revision.
        before = store.last_revision()
        await stub.SetUserLimits(
            pb.SetUserLimitsRequest(user="bob", rpm_limit=60, tpm_limit=6000), metadata=admin
        )
        assert store.last_revision() == before
        # Back to unlimited.
        await stub.SetUserLimits(pb.SetUserLimitsRequest(user="bob"), metadata=admin)
        (ch,) = await watcher.until(store.last_revision())
        assert (ch.user.rpm_limit, ch.user.tpm_limit) == (0, 0)
    finally:
        await watcher.close()


async def test_jwt_settings_set_by_admin_read_by_anyone(served, jwt_keypair, mint_token):
    stub, store, admin = served
    bob = user_metadata(mint_token("bob"))
    pem = jwt_keypair[0].read_text()
    req = pb.SetJwtSettingsRequest(
        settings=pb.JwtSettings(issuer="idp", audience="harness", public_key_pem=pem)
    )
    first = (await stub.SetJwtSettings(req, metadata=admin)).settings
    assert first.issuer == "idp" and first.HasField("update_time")
    revision = store.last_revision()
    again = (await stub.SetJwtSettings(req, metadata=admin)).settings
    assert again == first and store.last_revision() == revision  # same values: no new revision
    got = (await stub.GetJwtSettings(pb.GetJwtSettingsRequest(), metadata=bob)).settings
    assert (got.issuer, got.audience, got.public_key_pem) == ("idp", "harness", pem)


async def test_watch_from_the_current_revision_says_current(served):
    stub, store, admin = served
    held = store.last_revision()
    watcher = Watcher(stub, held, admin)
    try:
        current = await watcher.next()  # already current: one empty message
        assert (current.snapshot, len(current.changes), current.revision) == (False, 0, held)
    finally:
        await watcher.close()


async def _start_process(db_url: str, jwt_pub: Path) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.registry", "--port", "0", "--metrics-port", "-1",
        "--db-url", db_url, "--jwt-public-key", str(jwt_pub), "--watch-poll", "0.1",
        cwd=REPO_ROOT, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    log: list[str] = []
    address = None
    async with asyncio.timeout(60):
        while address is None:
            line = (await proc.stderr.readline()).decode()
            assert line, "registry exited before it was ready:\n" + "".join(log)
            log.append(line)
            if match := re.search(r"registry serving on (\S+)", line):
                address = match.group(1)

    async def drain() -> None:  # keep the pipe from filling and blocking the server
        while line := await proc.stderr.readline():
            log.append(line.decode())

    proc._drain = asyncio.create_task(drain())  # type: ignore[attr-defined]
    return proc, address, log


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()  # SIGKILL: no shutdown hook runs, streams just break
        await proc.wait()
    await proc._drain  # type: ignore[attr-defined]


async def test_watch_resumes_without_gaps_after_the_registry_is_killed(db_url, jwt_keypair, mint_token):
    admin = user_metadata(mint_token("alice", "admin"))
    seeder = Store(db_url)
    seeder.create_team(d.Team("finance"))
    seeder.create_project(d.Project("ledger", "finance"))
    seeder.register_model(d.Model("llama-3-8b"))
    seeder.create_agent(d.Agent("demo-agent", "ledger"), "harness.local")
    seeder.create_agent_version("demo-agent", d.AgentVersion("v1", ("llama-3-8b",)))
    first, address, _ = await _start_process(db_url, jwt_keypair[0])
    second = None
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = RegistryStub(channel)
            watcher = Watcher(stub, 0, admin)
            snap = await watcher.next()
            assert snap.snapshot and len(snap.changes) == 4
            await stub.SetAgentState(
                pb.SetAgentStateRequest(agent="demo-agent", state=ONLINE), metadata=admin
            )
            (seen,) = (await watcher.next()).changes
            last = seen.revision
            await _kill(first)  # mid-stream
            with pytest.raises(grpc.aio.AioRpcError) as broken:
                await watcher.next()
            assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
            await watcher.close()

        # While it is down another writer changes things; then a new process changes more.
        seeder.set_agent_state("demo-agent", "draining")
        seeder.create_team(d.Team("ops"))
        second, address, _ = await _start_process(db_url, jwt_keypair[0])
        async with grpc.aio.insecure_channel(address) as channel:
            stub = RegistryStub(channel)
            await stub.SetAgentState(
                pb.SetAgentStateRequest(agent="demo-agent", state=OFFLINE), metadata=admin
            )
            missed = [(c.revision, c.kind, c.key) for c in seeder.changes_since(last, 100)]
            assert len(missed) == 3

            watcher = Watcher(stub, last, admin)
            try:
                got = await watcher.until(missed[-1][0])
                assert [(c.revision, c.kind, c.key) for c in got] == [
                    (r, getattr(pb, f"ENTITY_KIND_{k.upper()}"), key) for r, k, key in missed
                ]
                # ...and it is live again: a change through the new process arrives as a delta.
                await stub.CreateTeam(pb.CreateTeamRequest(team=pb.Team(name="sre")), metadata=admin)
                (ch,) = (await watcher.next()).changes
                assert (ch.key, ch.revision) == ("sre", missed[-1][0] + 1)
            finally:
                await watcher.close()
    finally:
        await _kill(first)
        if second is not None:
            await _kill(second)
        seeder.close()
