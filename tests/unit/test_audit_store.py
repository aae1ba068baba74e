"""Audit store on SQLite and PostgreSQL: chain, dedup, concurrency, tamper detection, queries."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json

import pytest
from google.protobuf import timestamp_pb2
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from sqlalchemy import create_engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from services.audit.models import audit_records
from services.audit.store import AuditStore
from services.common import audit_chain as chain
from services.common.errors import InvalidArgument

T0 = 1_714_564_800  # 2024-05-01T12:00:00Z


def ts(seconds: int, micros: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def event(event_id: str, *, second: int = 0, kind=common_pb2.AUDIT_EVENT_KIND_MODEL_CALL, **fields):
    actor = common_pb2.Actor(user=fields.pop("user", "alice"), agent=fields.pop("agent", "ledger-bot"))
    corr = common_pb2.Correlation(
        trace_id=fields.pop("trace_id", "t1"), session_id=fields.pop("session_id", "s1")
    )
    ev = common_pb2.AuditEvent(
        event_id=event_id, time=ts(T0 + second), kind=kind, actor=actor, correlation=corr, **fields
    )
    return ev


@pytest.fixture
async def store(db_url):
    s = await AuditStore.open(db_url)
    yield s
    await s.close()


async def all_records(store: AuditStore) -> list[audit_pb2.AuditRecord]:
    out, token = [], ""
    while True:
        records, token = await store.query(
            audit_pb2.AuditFilter(), common_pb2.PageRequest(page_size=1000, page_token=token)
        )
        out.extend(records)
        if not token:
            return out


def test_canonical_encoding_is_the_documented_one():
    ev = common_pb2.AuditEvent(
        event_id="e1", time=ts(T0, 123456), kind=common_pb2.AUDIT_EVENT_KIND_TOOL_CALL, tool="ledger"
    )
    ev.details.update({"b": 1, "a": "x"})
    raw = chain.canonical(chain.row_from_event(ev, chain.ts_to_us(ev.time)), 7)
    doc = json.loads(raw)
    assert b" " not in raw  # no whitespace
    assert list(doc) == sorted(doc)  # sorted keys
    assert doc["time"] == "2024-05-01T12:00:00.123456Z"
    assert doc["sequence"] == 7 and doc["kind"] == "AUDIT_EVENT_KIND_TOOL_CALL"
    assert doc["decision"] == "DECISION_UNSPECIFIED" and doc["details"] == {"a": "x", "b": 1.0}
    assert doc["actor"]["user"] == "" and doc["correlation"]["trace_id"] == ""  # empty fields present
    prev = "ab" * 32
    expected = hashlib.sha256(raw + prev.encode()).hexdigest()
    assert chain.record_hash(chain.row_from_event(ev, chain.ts_to_us(ev.time)), 7, prev) == expected


async def test_appends_form_a_hash_chain(store):
    result = await store.ingest([event("e1"), event("e2", second=1), event("e3", second=2)])
    assert (result.accepted, result.duplicates) == (3, 0)
    records = await all_records(store)
    assert [r.sequence for r in records] == [1, 2, 3]
    assert records[0].prev_hash == ""
    for prev, rec in itertools.pairwise(records):
        assert rec.prev_hash == prev.hash
    for rec in records:  # hash recomputes from exactly what Query returns
        row = chain.row_from_event(rec.event, chain.ts_to_us(rec.event.time))
        assert rec.hash == chain.record_hash(row, rec.sequence, rec.prev_hash)
    assert records[1].event.actor.user == "alice" and records[1].event.correlation.trace_id == "t1"
    assert await store.head() == (3, records[-1].hash)
    verdict = await store.verify()
    assert verdict.ok and verdict.checked == 3 and verdict.first_broken_sequence == 0


async def test_resent_events_are_counted_and_stored_once(store):
    await store.ingest([event("e1"), event("e2")])
    again = await store.ingest([event("e2"), event("e3"), event("e3")])  # resend + twice in a batch
    assert (again.accepted, again.duplicates) == (1, 2)
    assert [r.event.event_id for r in await all_records(store)] == ["e1", "e2", "e3"]
    assert (await store.verify()).ok


async def test_event_id_uniqueness_is_enforced_by_the_database(store, db_url):
    await store.ingest([event("e1")])
    engine = create_engine(db_url)
    try:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            row = chain.row_from_event(event("e1"), 0)
            row.update(sequence=99, prev_hash="", hash="x", ingest_time_us=0)
            conn.execute(insert(audit_records), [row])
    finally:
        engine.dispose()


async def test_concurrent_ingest_from_two_writers_keeps_one_chain(db_url):
    # Two store instances = two connection pools, as two replicas would have: only the database
    # lock (advisory lock / BEGIN IMMEDIATE) keeps them from appending on the same head.
    a, b = await AuditStore.open(db_url), await AuditStore.open(db_url)
    try:
        ids = [f"e{i}" for i in range(60)]

        async def writer(s: AuditStore, order: list[str]) -> tuple[int, int]:
            acc = dup = 0
            for i in range(0, len(order), 4):
                r = await s.ingest([event(x) for x in order[i : i + 4]])
                acc, dup = acc + r.accepted, dup + r.duplicates
            return acc, dup

        (acc_a, dup_a), (acc_b, dup_b) = await asyncio.gather(writer(a, ids), writer(b, list(reversed(ids))))
        assert acc_a + acc_b == 60 and dup_a + dup_b == 60  # every event stored exactly once
        records = await all_records(a)
        assert [r.sequence for r in records] == list(range(1, 61))
        assert sorted(r.event.event_id for r in records) == sorted(ids)
        verdict = await a.verify()
        assert verdict.ok and verdict.checked == 60
    finally:
        await a.close()
        await b.close()


def _tamper(db_url: str, stmt) -> None:
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(stmt)
    finally:
        engine.dispose()


async def test_verify_names_a_changed_record(store, db_url):
    await store.ingest([event(f"e{i}", second=i, tool="ledger") for i in range(5)])
    _tamper(db_url, update(audit_records).where(audit_records.c.sequence == 3).values(tool="other"))
    verdict = await store.verify()
    assert not verdict.ok
    assert verdict.first_broken_sequence == 3 and verdict.checked == 2
    assert "hash mismatch" in verdict.reason


async def test_verify_names_a_broken_link_when_the_hash_was_recomputed(store, db_url):
    await store.ingest([event(f"e{i}", second=i) for i in range(5)])
    # A careful forger changes record 3 and recomputes its hash: record 4's link now breaks.
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            row = dict(
                conn.execute(select(audit_records).where(audit_records.c.sequence == 3)).one()._mapping
            )
            row["user"] = "mallory"
            new_hash = chain.record_hash(row, 3, row["prev_hash"])
            conn.execute(
                update(audit_records)
                .where(audit_records.c.sequence == 3)
                .values(user="mallory", hash=new_hash)
            )
    finally:
        engine.dispose()
    verdict = await store.verify()
    assert not verdict.ok and verdict.first_broken_sequence == 4
    assert "prev_hash link broken" in verdict.reason


async def test_verify_names_a_deleted_record(store, db_url):
    await store.ingest([event(f"e{i}", second=i) for i in range(4)])
    _tamper(db_url, delete(audit_records).where(audit_records.c.sequence == 2))
    verdict = await store.verify()
    assert not verdict.ok and verdict.first_broken_sequence == 2 and "missing" in verdict.reason


async def test_verify_from_a_sequence(store, db_url):
    await store.ingest([event(f"e{i}", second=i) for i in range(6)])
    _tamper(db_url, update(audit_records).where(audit_records.c.sequence == 2).values(action="x"))
    tail = await store.verify(from_sequence=4)
    assert tail.ok and tail.checked == 3
    assert (await store.verify(from_sequence=0)).first_broken_sequence == 2


async def test_missing_event_id_or_kind_names_the_index(store):
    with pytest.raises(InvalidArgument, match="event 1"):
        await store.ingest([event("ok"), event("")])
    with pytest.raises(InvalidArgument, match=r"event 2 \(bad\): kind is required"):
        await store.ingest(
            [event("a"), event("b"), event("bad", kind=common_pb2.AUDIT_EVENT_KIND_UNSPECIFIED)]
        )
    assert await all_records(store) == []  # a bad batch stores nothing


async def test_query_filters_and_pages(store):
    await store.ingest(
        [
            event("a1", second=0, user="alice", tool="ledger", action="read"),
            event("a2", second=10, user="alice", tool="ledger", action="delete",
                  decision=common_pb2.DECISION_DENY, kind=common_pb2.AUDIT_EVENT_KIND_AUTHZ_DECISION),
            event("b1", second=20, user="bob", agent="rpa-bot", trace_id="t2", session_id="s2"),
            event("a3", second=30, user="alice", trace_id="t2"),
        ]
    )  # fmt: skip

    async def ids(**f) -> list[str]:
        records, _ = await store.query(audit_pb2.AuditFilter(**f))
        return [r.event.event_id for r in records]

    assert await ids(user="alice") == ["a1", "a2", "a3"]
    assert await ids(agent="rpa-bot") == ["b1"]
    assert await ids(trace_id="t2") == ["b1", "a3"]
    assert await ids(session_id="s1", tool="ledger", action="delete") == ["a2"]
    assert await ids(decision=common_pb2.DECISION_DENY) == ["a2"]
    assert await ids(kind=common_pb2.AUDIT_EVENT_KIND_MODEL_CALL) == ["a1", "b1", "a3"]
    assert await ids(start_time=ts(T0 + 10), end_time=ts(T0 + 30)) == ["a2", "b1"]

    page1, token = await store.query(audit_pb2.AuditFilter(), common_pb2.PageRequest(page_size=3))
    assert [r.sequence for r in page1] == [1, 2, 3] and token == "3"
    page2, token2 = await store.query(
        audit_pb2.AuditFilter(), common_pb2.PageRequest(page_size=3, page_token=token)
    )
    assert [r.sequence for r in page2] == [4] and token2 == ""
    with pytest.raises(InvalidArgument, match="page_token"):
        await store.query(audit_pb2.AuditFilter(), common_pb2.PageRequest(page_token="nope"))


# ---- tampering named by Verify (event id, failure, expected/found), on SQLite and PostgreSQL ----


@pytest.mark.parametrize(
    ("column", "value"),
    [("user", "mallory"), ("decision", common_pb2.DECISION_ALLOW), ("details", '{"rows":0}'), ("time_us", 1)],
)
async def test_verify_names_the_tampered_record_and_what_mismatched(store, db_url, column, value):
    await store.ingest(
        [event(f"e{i}", second=i, tool="ledger", action="delete", decision=common_pb2.DECISION_DENY)
         for i in range(6)]
    )  # fmt: skip
    stored = {r.sequence: r for r in await all_records(store)}
    _tamper(db_url, update(audit_records).where(audit_records.c.sequence == 4).values({column: value}))
    verdict = await store.verify()
    assert not verdict.ok and verdict.checked == 3
    assert verdict.first_broken_sequence == 4 and verdict.first_broken_event_id == "e3"
    assert verdict.failure == "hash_mismatch"
    assert verdict.found == stored[4].hash and verdict.expected != stored[4].hash
    assert "record 4 (event e3)" in verdict.reason


async def test_verify_names_link_and_missing_failures(store, db_url):
    await store.ingest([event(f"e{i}", second=i) for i in range(5)])
    before = {r.sequence: r.hash for r in await all_records(store)}
    _tamper(db_url, update(audit_records).where(audit_records.c.sequence == 2).values(prev_hash="0" * 64))
    verdict = await store.verify()
    assert (verdict.first_broken_sequence, verdict.first_broken_event_id) == (2, "e1")
    assert verdict.failure == "link_broken" and verdict.expected == before[1] and verdict.found == "0" * 64
    _tamper(db_url, delete(audit_records).where(audit_records.c.sequence <= 2))
    verdict = await store.verify()
    assert verdict.failure == "missing_record" and verdict.first_broken_sequence == 1
    assert (verdict.expected, verdict.found, verdict.first_broken_event_id) == ("1", "3", "")


async def test_query_by_version_step_resource_and_request(store):
    def ev(eid, **f):
        e = event(eid, **{k: v for k, v in f.items() if k not in ("version", "step", "request")})
        e.actor.agent_version = f.get("version", "")
        e.correlation.step_id = f.get("step", "")
        e.correlation.request_id = f.get("request", "")
        return e

    await store.ingest(
        [
            ev("x1", version="v1", step="1", object="tool:ledger", request="r1"),
            ev("x2", version="v2", step="1", object="model:llama", request="r2"),
            ev("x3", version="v2", step="2", object="tool:ledger", request="r3"),
        ]
    )

    async def ids(**f) -> list[str]:
        return [r.event.event_id for r in (await store.query(audit_pb2.AuditFilter(**f)))[0]]

    assert await ids(agent_version="v2") == ["x2", "x3"]
    assert await ids(step_id="1") == ["x1", "x2"]
    assert await ids(object="tool:ledger") == ["x1", "x3"]
    assert await ids(request_id="r2") == ["x2"]
    assert await ids(agent_version="v2", step_id="2", object="tool:ledger") == ["x3"]


async def test_scan_batches_every_match_and_lineage_records(store):
    await store.ingest([event(f"e{i}", second=i, trace_id="t9" if i % 3 == 0 else "t1") for i in range(10)])
    batches = [b async for b in store.scan(audit_pb2.AuditFilter(trace_id="t1"), batch=3)]
    assert [len(b) for b in batches] == [3, 3]
    assert [r.event.event_id for b in batches for r in b] == ["e1", "e2", "e4", "e5", "e7", "e8"]
    assert [b async for b in store.scan(audit_pb2.AuditFilter(user="nobody"))] == []

    records, truncated = await store.lineage_records("t9", "")
    assert [r.event.event_id for r in records] == ["e0", "e3", "e6", "e9"] and not truncated
    records, truncated = await store.lineage_records("", "s1", limit=4)
    assert len(records) == 4 and truncated
    records, _ = await store.lineage_records("t9", "other-session")
    assert records == []
    with pytest.raises(InvalidArgument, match="trace_id or a session_id"):
        await store.lineage_records("", "")
