"""The pool's claim-store schema migrations on SQLite and PostgreSQL, alone and sharing one
database with the registry, cost and audit: up from empty and in step with the models, the same
schema the old `create_all` made, adoption of such a database with its claims kept, downgrades
that touch only the pool's tables, the command line, and stores opening one database together.

PostgreSQL runs use the `db_url` fixture: a fresh database per test, dropped afterwards (and a
failure, not a skip, when CI=true and PostgreSQL is missing).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from services.audit import migrate as audit_migrate
from services.audit.store import AuditStore
from services.common.db import make_engine
from services.cost import migrate as cost_migrate
from services.cost.store import CostStore
from services.pool import migrate as pool_migrate
from services.pool.claims_schema import ClaimRow, metadata
from services.pool.claims_store import ClaimStore, StoredClaim
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
POOL_TABLES = {"pool_claims", "pool_admin_changes"}
POOL_VERSION = "alembic_version_pool"
OTHER_MIGRATES = (registry_migrate, cost_migrate, audit_migrate)
OTHER_VERSIONS = {"alembic_version", "alembic_version_cost", "alembic_version_audit"}


@pytest.fixture
def engine(db_url):
    e = make_engine(db_url)
    yield e
    e.dispose()


def _close(store) -> None:
    """Closes a store of any service from sync code (cost and audit close asynchronously)."""
    if isinstance(store, (CostStore, AuditStore)):
        asyncio.run(store.close())
    else:
        store.close()


# ---- the pool alone ----


def test_fresh_database_upgrades_to_head_in_sync_and_back(engine):
    m = pool_migrate
    assert m.current(engine) is None and tables(engine) == set()
    m.upgrade(engine)
    assert m.current(engine) == m.head() != ""
    assert tables(engine) == POOL_TABLES | {POOL_VERSION}
    assert m.diff(engine) == []  # autogenerate finds nothing: migrations == models

    m.upgrade(engine)  # idempotent: already at head
    assert m.current(engine) == m.head() and m.diff(engine) == []

    m.downgrade(engine)
    assert m.current(engine) is None and tables(engine) == {POOL_VERSION}
    m.upgrade(engine)  # and back up again: the downgrade left nothing behind that blocks it
    assert m.current(engine) == m.head() and m.diff(engine) == []


def test_migrations_make_what_create_all_makes(engine):
    """Column for column, stricter than `diff`."""
    pool_migrate.upgrade(engine)
    migrated = schema(engine, POOL_TABLES)
    assert migrated["pool_claims"][1] == ["model", "owner"]  # one claim per (model, owner)
    pool_migrate.downgrade(engine)
    metadata.create_all(engine)
    assert schema(engine, POOL_TABLES) == migrated


def test_diff_notices_a_schema_that_drifted(engine):
    pool_migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE pool_claims"))
    assert [(change[0], change[1].name) for change in pool_migrate.diff(engine)] == [
        ("add_table", "pool_claims")
    ]


def test_the_store_works_after_opening(db_url, engine):
    store = ClaimStore(db_url)
    try:
        assert pool_migrate.current(engine) == pool_migrate.head()
        store.put("llama", "team:x", 2, 0.0)
        store.put("llama", "agent:a", 1, 600.0)
        store.put("mistral", "team:y", 1, 0.0)
        store.set_scaled_to_zero("llama", True)
        store.remove("mistral")
        assert store.load() == [
            StoredClaim("llama", "agent:a", 1, 600.0, True),
            StoredClaim("llama", "team:x", 2, 0.0, True),
        ]
    finally:
        store.close()
    store = ClaimStore(db_url)  # reopened: already at head, the claims are still there
    try:
        assert [(c.model, c.owner, c.replicas) for c in store.load()] == [
            ("llama", "agent:a", 1), ("llama", "team:x", 2)
        ]  # fmt: skip
        store.put("llama", "team:x", 3, 0.0)  # a put warms the model up again
        assert [(c.replicas, c.scaled_to_zero) for c in store.load()] == [(1, False), (3, False)]
    finally:
        store.close()


def test_ops_command_line(db_url, capsys):
    check_ops_command_line(pool_migrate, db_url, capsys)


def test_command_line_defaults_to_the_pools_db_env(tmp_path, monkeypatch, capsys):
    path = tmp_path / "state" / "pool.db"
    monkeypatch.setenv("HARNESS_POOL_DB", f"sqlite:///{path}")
    pool_migrate.main(["upgrade"])
    head = pool_migrate.head()
    assert capsys.readouterr().out.strip() == f"{head} (head {head})" and path.exists()


def test_command_line_without_a_database_says_so(monkeypatch):
    """The pool keeps its claims in memory by default: there is no default URL to migrate."""
    monkeypatch.delenv("HARNESS_POOL_DB", raising=False)
    with pytest.raises(SystemExit) as done:
        pool_migrate.main(["upgrade"])
    assert "--db-url" in str(done.value.code) and "HARNESS_POOL_DB" in str(done.value.code)


def test_module_runs_as_a_command(tmp_path):
    path = tmp_path / "pool.db"
    run = subprocess.run(
        [sys.executable, "-m", "services.pool.migrate", "--db-url", f"sqlite:///{path}", "upgrade"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    head = pool_migrate.head()
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{head} (head {head})"


# ---- adoption of a pre-migration (create_all) database ----


def test_pre_migration_database_is_adopted_with_its_claims(db_url, engine):
    """A claims DB made by the old create_all (no version table) holding a claim, in a database
    the registry already migrated: its `alembic_version` must not be taken for the pool's."""
    RegistryStore(db_url).close()
    metadata.create_all(engine, tables=[ClaimRow.__table__])  # all the old create_all made
    with Session(engine) as s, s.begin():
        s.add(ClaimRow(model="llama", owner="team:x", replicas=2, idle_ttl_s=30.0, scaled_to_zero=True))
    assert pool_migrate.current(engine) is None

    store = ClaimStore(db_url)
    try:
        at_head_and_in_sync(engine, pool_migrate, registry_migrate)
        assert store.load() == [StoredClaim("llama", "team:x", 2, 30.0, True)]  # the claim kept
        store.put("mistral", "team:y", 1, 0.0)
        assert [c.model for c in store.load()] == ["llama", "mistral"]
    finally:
        store.close()


def test_a_registry_database_is_not_taken_for_a_pre_migration_pool_one(db_url, engine):
    """Only the pool's own sentinel table triggers adoption: the pool starts from base here."""
    RegistryStore(db_url).close()
    ClaimStore(db_url).close()
    assert pool_migrate.current(engine) == pool_migrate.head() and POOL_TABLES <= tables(engine)


# ---- services sharing one database ----


def test_pool_shares_a_database_with_the_other_services(db_url, engine):
    for store_type in (RegistryStore, CostStore, AuditStore, ClaimStore):
        _close(store_type(db_url))
    others = tables(engine) - POOL_TABLES - {POOL_VERSION}
    assert POOL_TABLES | {POOL_VERSION} <= tables(engine)
    assert {"changes", "usage_ledger", "audit_records"} | OTHER_VERSIONS <= others
    at_head_and_in_sync(engine, pool_migrate, *OTHER_MIGRATES)

    pool_migrate.downgrade(engine)  # only the pool's tables go
    assert tables(engine) == others | {POOL_VERSION}
    assert pool_migrate.current(engine) is None
    at_head_and_in_sync(engine, *OTHER_MIGRATES)

    pool_migrate.upgrade(engine)
    for m in OTHER_MIGRATES:  # and the others' downgrades leave the pool alone
        m.downgrade(engine)
    assert tables(engine) == POOL_TABLES | {POOL_VERSION} | OTHER_VERSIONS
    at_head_and_in_sync(engine, pool_migrate)


# ---- concurrency ----


def test_stores_opening_one_database_together_do_not_fail(db_url, engine):
    """Claim stores (and cost and audit stores) opened at once in one process."""
    store_types = [ClaimStore] * 3 + [CostStore, AuditStore]
    barrier, errors = threading.Barrier(len(store_types)), []

    def open_one(store_type: type) -> None:
        try:
            barrier.wait(timeout=30)
            _close(store_type(db_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(t,)) for t in store_types]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a store open hung"
    assert errors == []
    at_head_and_in_sync(engine, pool_migrate, cost_migrate, audit_migrate)


# Says it is ready (imports done), waits for the start (its stdin closes: all replicas' at once),
# then opens the store, so the opens really race.
OPENER = """
import sys
from services.pool.claims_store import ClaimStore
url = sys.argv[1]
print("ready", flush=True)
sys.stdin.read()
ClaimStore(url).close()
"""


def test_pool_replicas_starting_together_do_not_fail(db_url, engine):
    """Separate processes opening one claims database at once: the migration lock lets one create
    the table and the rest find it at head (PostgreSQL: the pool's advisory lock; SQLite: BEGIN
    IMMEDIATE)."""
    assert start_together(OPENER, [[db_url]] * 4, ROOT) == []
    at_head_and_in_sync(engine, pool_migrate)
