"""Cost and audit schema migrations on SQLite and PostgreSQL, alone and sharing one database with
the registry: up from empty and in step with the models, adoption of a database made by the old
`create_all`, downgrades that touch only their own service, and concurrent opens (the lock).

PostgreSQL runs use the `db_url` fixture: a fresh database per test, dropped afterwards (and a
failure, not a skip, when CI=true and PostgreSQL is missing).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import timestamp_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from sqlalchemy import Engine, MetaData, func, insert, inspect, select, text

from services.audit import migrate as audit_migrate
from services.audit import models as audit_models
from services.audit.store import AuditStore
from services.common import audit_chain as chain
from services.common.db import make_engine
from services.cost import migrate as cost_migrate
from services.cost import models as cost_models
from services.cost.store import CostStore
from services.registry import migrate as registry_migrate
from services.registry.store import Store as RegistryStore
from tests.helpers.migrations import (
    at_head_and_in_sync,
    check_ops_command_line,
    schema,
    start_together,
    tables,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_714_564_800  # 2024-05-01T12:00:00Z
COST_TABLES = {
    "prices",
    "usage_ledger",
    "budgets",
    "budget_alerts",
    "cost_totals",
    "spend_buckets",
    "admin_changes",
}
AUDIT_TABLES = {"audit_records", "approvals"}
REGISTRY_TABLES = {t for md in registry_migrate.target_metadata() for t in md.tables}
VERSION_TABLES = {"alembic_version", "alembic_version_cost", "alembic_version_audit"}


@dataclass(frozen=True)
class Service:
    name: str
    migrate: ModuleType
    metadata: MetaData
    tables: set[str]
    version_table: str
    open: type  # the store class; constructing it migrates


COST = Service("cost", cost_migrate, cost_models.metadata, COST_TABLES, "alembic_version_cost", CostStore)
AUDIT = Service(
    "audit", audit_migrate, audit_models.metadata, AUDIT_TABLES, "alembic_version_audit", AuditStore
)


@pytest.fixture(params=[COST, AUDIT], ids=lambda s: s.name)
def service(request) -> Service:
    return request.param


@pytest.fixture
def engine(db_url):
    e = make_engine(db_url)
    yield e
    e.dispose()


def ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def usage(event_id: str) -> common_pb2.UsageEvent:
    return common_pb2.UsageEvent(
        event_id=event_id, time=ts(T0), model="m", actor=common_pb2.Actor(user="u", project="p"),
        usage=common_pb2.Usage(input_tokens=1000),
    )  # fmt: skip


def audit_event(event_id: str) -> common_pb2.AuditEvent:
    return common_pb2.AuditEvent(
        event_id=event_id, time=ts(T0), kind=common_pb2.AUDIT_EVENT_KIND_MODEL_CALL,
        actor=common_pb2.Actor(user="alice"),
    )  # fmt: skip


# ---- one service alone ----


def test_fresh_database_upgrades_to_head_in_sync_and_back(service, engine):
    m = service.migrate
    assert m.current(engine) is None and tables(engine) == set()
    m.upgrade(engine)
    assert m.current(engine) == m.head() != ""
    assert tables(engine) == service.tables | {service.version_table}
    assert m.diff(engine) == []  # autogenerate finds nothing: migrations == models

    m.upgrade(engine)  # idempotent: already at head
    assert m.current(engine) == m.head() and m.diff(engine) == []

    m.downgrade(engine)
    assert m.current(engine) is None and tables(engine) == {service.version_table}
    m.upgrade(engine)  # and back up again: the downgrade left nothing behind that blocks it
    assert m.current(engine) == m.head() and m.diff(engine) == []


def test_migrations_make_what_create_all_makes(service, engine):
    """Column for column, stricter than `diff`. While the head is the baseline this is also the
    adoption premise: revision 0001 is exactly the schema the old create_all made."""
    service.migrate.upgrade(engine)
    migrated = schema(engine, service.tables)
    service.migrate.downgrade(engine)
    service.metadata.create_all(engine)
    assert schema(engine, service.tables) == migrated
    log = "usage_ledger" if service is COST else "audit_records"
    assert ("event_id",) in migrated[log][2]  # the idempotency key is a database UNIQUE
    if service is COST:
        uniques = {
            u["name"]: u["column_names"] for u in inspect(engine).get_unique_constraints("budget_alerts")
        }
        assert uniques["uq_budget_alert"] == ["budget", "period_start_us", "percent"]


def test_diff_notices_a_schema_that_drifted(service, engine):
    service.migrate.upgrade(engine)
    index = "ix_ledger_time" if service is COST else "ix_audit_trace"
    with engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {index}"))
    assert [(change[0], change[1].name) for change in service.migrate.diff(engine)] == [("add_index", index)]


def test_ops_command_line(service, db_url, capsys):
    check_ops_command_line(service.migrate, db_url, capsys)


def test_command_line_defaults_to_the_services_db_env(service, tmp_path, monkeypatch, capsys):
    path = tmp_path / "state" / f"{service.name}.db"
    monkeypatch.setenv(f"HARNESS_{service.name.upper()}_DB", f"sqlite:///{path}")
    service.migrate.main(["upgrade"])
    head = service.migrate.head()
    assert capsys.readouterr().out.strip() == f"{head} (head {head})" and path.exists()


# ---- adoption of a pre-migration (create_all) database ----


async def test_pre_migration_cost_database_is_adopted(db_url, engine):
    """A cost DB made by the old create_all (no version table), in a database the registry
    already migrated: its `alembic_version` must not be taken for the cost service's."""
    RegistryStore(db_url).close()
    # What create_all made before migrations: the 0001 tables (0002 and 0003 added the sums, 0004
    # the admin changes, 0005 the ledger's usage_estimated).
    later = ("cost_totals", "spend_buckets", "admin_changes")
    old = [t for t in cost_models.metadata.sorted_tables if t.name not in later]
    cost_models.metadata.create_all(engine, tables=old)
    with engine.begin() as conn:
        conn.execute(
            insert(cost_models.prices),
            {"kind": cost_pb2.PRICE_KIND_MODEL_INPUT_TOKENS, "subject": "m", "micro_usd": 2_000_000,
             "effective_us": 0, "set_us": 0},
        )  # fmt: skip
        conn.execute(
            insert(cost_models.ledger),
            [{"event_id": f"old-{i}", "time_us": 0, "day": "2024-05-01", "recorded_us": 0, "team": "t",
              "project": "p", "agent": "a", "model": "m", "cost_micro_usd": micro}
             for i, micro in enumerate((300, 400, 0))],
        )  # fmt: skip
        conn.execute(text("ALTER TABLE usage_ledger DROP COLUMN usage_estimated"))  # came in 0005
    assert cost_migrate.current(engine) is None

    store = await CostStore.open(db_url)
    try:
        assert cost_migrate.current(engine) == cost_migrate.head() and cost_migrate.diff(engine) == []
        assert [p.micro_usd for p in await store.list_prices()] == [2_000_000]  # data kept
        recorded = await store.record([usage("e1")])  # and priced with the old row
        assert recorded.accepted == 1 and recorded.new[0].cost_micro_usd == 2_000
        with engine.connect() as conn:  # 0002 summed the old ledger; the new batch added to it
            totals = conn.execute(select(cost_models.cost_totals)).all()
            buckets = conn.execute(select(cost_models.spend_buckets)).all()
        assert sorted((r.team, r.project, r.agent, r.model, r.cost_micro_usd) for r in totals) == [
            ("", "p", "", "m", 2_000), ("t", "p", "a", "m", 700)
        ]  # fmt: skip
        # 0003 bucketed the old rows (time 0) by team, project and agent; the new one by user and project.
        assert sorted((r.scope, r.subject, r.bucket_us, r.cost_micro_usd) for r in buckets) == [
            (1, "u", T0 * 1_000_000 - T0 * 1_000_000 % 900_000_000, 2_000),
            (2, "t", 0, 700), (3, "p", 0, 700),
            (3, "p", T0 * 1_000_000 - T0 * 1_000_000 % 900_000_000, 2_000), (4, "a", 0, 700),
        ]  # fmt: skip
    finally:
        await store.close()
    assert registry_migrate.current(engine) == registry_migrate.head() and registry_migrate.diff(engine) == []


async def test_pre_migration_audit_database_is_adopted(db_url, engine):
    """An audit DB made by the old create_all holding a chained record: adopted, chain intact."""
    audit_models.metadata.create_all(engine)
    row = chain.row_from_event(audit_event("old"), T0 * 1_000_000)
    row.update(sequence=1, prev_hash="", ingest_time_us=T0 * 1_000_000)
    row["hash"] = chain.record_hash(row, 1, "")
    with engine.begin() as conn:
        conn.execute(insert(audit_models.audit_records), row)

    store = await AuditStore.open(db_url)
    try:
        assert audit_migrate.current(engine) == audit_migrate.head() and audit_migrate.diff(engine) == []
        assert (await store.ingest([audit_event("new")])).accepted == 1
        result = await store.verify()
        assert result.ok and result.checked == 2  # the old record is still the chain's first
    finally:
        await store.close()
    store = await AuditStore.open(db_url)  # second open: already at head, nothing to adopt
    try:
        assert (await store.head())[0] == 2
    finally:
        await store.close()


# ---- services sharing one database ----


def _open_and_close(store_type: type, db_url: str) -> None:
    """Opens a store (which migrates its schema) and closes it again, from sync code."""
    store = store_type(db_url)
    if store_type is RegistryStore:
        store.close()
    else:
        asyncio.run(store.close())


def _shared(db_url: str) -> None:
    """Registry, cost and audit each migrate the same database, as their stores do on open."""
    for store_type in (RegistryStore, CostStore, AuditStore):
        _open_and_close(store_type, db_url)


def test_services_share_a_database_without_seeing_each_other(db_url, engine):
    _shared(db_url)
    assert tables(engine) == REGISTRY_TABLES | COST_TABLES | AUDIT_TABLES | VERSION_TABLES
    at_head_and_in_sync(engine, registry_migrate, cost_migrate, audit_migrate)

    cost_migrate.downgrade(engine)
    assert tables(engine) == REGISTRY_TABLES | AUDIT_TABLES | VERSION_TABLES
    assert cost_migrate.current(engine) is None
    at_head_and_in_sync(engine, registry_migrate, audit_migrate)

    audit_migrate.downgrade(engine)
    assert tables(engine) == REGISTRY_TABLES | VERSION_TABLES
    at_head_and_in_sync(engine, registry_migrate)

    cost_migrate.upgrade(engine)
    audit_migrate.upgrade(engine)
    registry_migrate.downgrade(engine)  # the registry's downgrade leaves cost and audit alone too
    assert tables(engine) == COST_TABLES | AUDIT_TABLES | VERSION_TABLES
    at_head_and_in_sync(engine, cost_migrate, audit_migrate)


def test_a_registry_database_is_not_taken_for_a_pre_migration_cost_one(db_url, engine):
    """Only the service's own sentinel table triggers adoption: cost starts from base here."""
    RegistryStore(db_url).close()
    cost_migrate.upgrade(engine)
    assert cost_migrate.current(engine) == cost_migrate.head() and COST_TABLES <= tables(engine)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(cost_models.ledger)) == 0


# ---- concurrency ----


def _open_together(db_url: str, store_types: list[type]) -> list[BaseException]:
    """Opens one store per entry at the same moment (each its own engine); returns the failures."""
    barrier, errors = threading.Barrier(len(store_types)), []

    def open_one(store_type: type) -> None:
        try:
            barrier.wait(timeout=30)
            _open_and_close(store_type, db_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(t,)) for t in store_types]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a store open hung"
    return errors


def test_stores_opening_one_database_together_do_not_fail(db_url, engine):
    """Stores of every service opened at once in one process (as `asyncio.to_thread` opens do)."""
    store_types = [CostStore] * 3 + [AuditStore] * 3
    if engine.dialect.name == "postgresql":
        store_types += [RegistryStore] * 3
    assert _open_together(db_url, store_types) == []
    at_head_and_in_sync(engine, *_migrates_of(engine))


# Says it is ready (imports done), waits for the start (its stdin closes: all replicas' at once),
# then opens the store, so the opens really race.
OPENER = """
import asyncio, sys
from services.audit.store import AuditStore
from services.cost.store import CostStore
from services.registry.store import Store
kind, url = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.read()
store = {"cost": CostStore, "audit": AuditStore, "registry": Store}[kind](url)
store.close() if kind == "registry" else asyncio.run(store.close())
"""


def test_replicas_starting_together_do_not_fail(db_url, engine):
    """Separate processes (replicas) opening one database at once: the migration lock lets one
    create the tables and the rest find them at head (PostgreSQL: advisory lock per service;
    SQLite: BEGIN IMMEDIATE)."""
    kinds = ["cost"] * 3 + ["audit"] * 3
    if engine.dialect.name == "postgresql":
        kinds += ["registry"] * 3
    assert start_together(OPENER, [[kind, db_url] for kind in kinds], ROOT) == []
    at_head_and_in_sync(engine, *_migrates_of(engine))


def _migrates_of(engine: Engine) -> list[ModuleType]:
    """The registry joins the concurrency tests on PostgreSQL only: its SQLite engine runs DDL
    outside a transaction (pysqlite's legacy mode), which no lock taken at BEGIN can cover."""
    if engine.dialect.name == "postgresql":
        return [cost_migrate, audit_migrate, registry_migrate]
    return [cost_migrate, audit_migrate]
