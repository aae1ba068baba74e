"""Registry schema migrations on SQLite and PostgreSQL: up from empty, down to base, in step with
the models, and adoption of a database made by `create_all` before migrations existed."""

from __future__ import annotations

import pytest
from casbin_sqlalchemy_adapter import CasbinRule
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import inspect, text

from services.registry import domain as d
from services.registry import migrate
from services.registry.models import Base
from services.registry.policy import Policy
from services.registry.store import Store, make_engine

TABLES = {
    "teams",
    "projects",
    "users",
    "api_keys",
    "agents",
    "agent_versions",
    "models",
    "tools",
    "changes",
    "casbin_rule",
    "jwt_settings",
    "audit_cursor",
    "secrets",
}

ACTOR_COLUMNS = (
    "action",
    "actor_user",
    "actor_agent",
    "actor_service",
    "auth_method",
    "request_id",
    "trace_id",
)


@pytest.fixture
def engine(db_url):
    e = make_engine(db_url)
    yield e
    e.dispose()


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_from_empty_then_downgrade_to_base(engine):
    assert _tables(engine) == set() and migrate.current(engine) is None
    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head() == "0009"
    assert _tables(engine) == TABLES
    assert migrate.diff(engine) == []  # autogenerate finds nothing: migrations == models

    migrate.downgrade(engine, "0008")
    assert {c["name"] for c in inspect(engine).get_columns("api_keys")}.isdisjoint({"agent"})
    assert {c["name"] for c in inspect(engine).get_columns("agents")}.isdisjoint({"api_key_auth"})
    migrate.downgrade(engine, "0007")
    assert _tables(engine) == TABLES - {"secrets"}
    assert {c["name"] for c in inspect(engine).get_columns("tools")}.isdisjoint(
        {"credential", "credential_header"}
    )
    migrate.downgrade(engine, "0006")
    assert {c["name"] for c in inspect(engine).get_columns("models")}.isdisjoint({"kind", "dimensions"})
    migrate.downgrade(engine, "0005")
    assert {c["name"] for c in inspect(engine).get_columns("jwt_settings")}.isdisjoint(
        {"jwks_url", "oidc_discovery_url"}
    )
    migrate.downgrade(engine, "0004")
    assert migrate.current(engine) == "0004" and _tables(engine) == TABLES - {"secrets"}
    migrate.downgrade(engine, "0003")
    assert migrate.current(engine) == "0003" and _tables(engine) == TABLES - {"audit_cursor", "secrets"}
    assert {c["name"] for c in inspect(engine).get_columns("changes")}.isdisjoint(ACTOR_COLUMNS)
    migrate.downgrade(engine, "0002")
    assert migrate.current(engine) == "0002" and _tables(engine) == TABLES - {"audit_cursor", "secrets"}
    assert {c["name"] for c in inspect(engine).get_columns("users")}.isdisjoint({"rpm_limit", "tpm_limit"})
    migrate.downgrade(engine, "0001")
    assert migrate.current(engine) == "0001" and _tables(engine) == TABLES - {
        "jwt_settings",
        "audit_cursor",
        "secrets",
    }
    migrate.downgrade(engine)
    assert migrate.current(engine) is None and _tables(engine) == set()

    migrate.upgrade(engine)  # and back up again: downgrades left nothing behind that blocks it
    assert _tables(engine) == TABLES and migrate.diff(engine) == []


def test_diff_notices_a_schema_that_drifted(engine):
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE jwt_settings"))
    assert [change[0] for change in migrate.diff(engine)] == ["add_table"]


def test_store_migrates_on_open_and_reopens(db_url):
    store = Store(db_url)
    store.create_team(d.Team("finance"))
    store.create_project(d.Project("ledger", "finance"))
    # The casbin adapter works on the table the migrations made (it no longer creates it).
    assert Policy(store).add(d.PolicyRule("g", ("alice", "role:a", "ledger")))
    store.close()
    store = Store(db_url)  # second open: already at head, data kept
    try:
        assert migrate.current(store.engine) == migrate.head()
        assert [t.name for t in store.list_teams(d.Page())[0]] == ["finance"]
        assert [r.csv() for r in Policy(store).list()] == ["g, user:alice, role:a, ledger"]
    finally:
        store.close()


def test_pre_migration_database_is_adopted(engine, db_url):
    """A registry DB made by the thin slice's create_all (0001's tables, no alembic_version)."""
    later = {"jwt_settings", "audit_cursor", "secrets"}
    legacy = [t for t in Base.metadata.sorted_tables if t.name not in later]
    Base.metadata.create_all(engine, tables=legacy)
    with engine.begin() as conn:  # columns added after 0001 were not there either
        for column in ("rpm_limit", "tpm_limit"):
            conn.execute(text(f"ALTER TABLE users DROP COLUMN {column}"))
        for column in ACTOR_COLUMNS:
            conn.execute(text(f"ALTER TABLE changes DROP COLUMN {column}"))
        for column in ("kind", "dimensions"):
            conn.execute(text(f"ALTER TABLE models DROP COLUMN {column}"))
        for column in ("credential", "credential_header"):
            conn.execute(text(f"ALTER TABLE tools DROP COLUMN {column}"))
        conn.execute(text("ALTER TABLE api_keys DROP COLUMN agent"))
        conn.execute(text("ALTER TABLE agents DROP COLUMN api_key_auth"))
    CasbinRule.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO teams (name, display_name, create_time) VALUES ('old', '', :t)"), {"t": d.now()}
        )
    store = Store(db_url)
    try:
        assert migrate.current(store.engine) == migrate.head()
        assert [t.name for t in store.list_teams(d.Page())[0]] == ["old"]
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        store.set_jwt_settings(d.JwtSettings("iss", "aud", pem.decode()))  # 0002's table is there
        assert store.get_jwt_settings().issuer == "iss"
        assert _tables(store.engine) == TABLES
        store.create_user(d.User("zed", rpm_limit=3))  # 0003's columns are there
        assert store.get_user("zed").rpm_limit == 3 and migrate.diff(store.engine) == []
        assert store.change_records(0, 10)[-1].action == "create"  # and 0004's
        assert store.set_audit_cursor(2) == 2 and store.audit_cursor() == 2
        store.register_model(d.Model("e5", kind="embedding", dimensions=768))  # and 0007's
        assert store.list_models(d.Page())[0][0].kind == "embedding"
    finally:
        store.close()


def test_ops_command_line(db_url, capsys):
    migrate.main(["--db-url", db_url, "upgrade"])
    assert capsys.readouterr().out.strip() == "0009 (head 0009)"
    with pytest.raises(SystemExit) as done:
        migrate.main(["--db-url", db_url, "check"])
    assert done.value.code == 0 and "in sync" in capsys.readouterr().out
    migrate.main(["--db-url", db_url, "downgrade"])
    assert capsys.readouterr().out.strip() == "(empty) (head 0009)"


def test_bare_user_subjects_are_namespaced_and_the_change_is_logged(engine):
    """0005: rules written with a bare user name become user:<name>; routers resuming their
    watch from an older revision get the rewrite as a delete of the old rule and an add."""
    migrate.upgrade(engine, "0004")
    rows = [
        ("p", "bob", "ledger", "agent:demo-agent", "invoke", "allow"),
        ("g", "alice", "role:analyst", "ledger", None, None),
        ("p", "role:analyst", "ledger", "agent:*", "invoke", "allow"),
        ("p", "agent:demo-agent", "ledger", "model:m", "invoke", "allow"),
        ("g", "user:carol", "role:analyst", "ledger", None, None),
    ]
    with engine.begin() as conn:
        for row in rows:
            conn.execute(
                text("INSERT INTO casbin_rule (ptype, v0, v1, v2, v3, v4) VALUES (:p, :a, :b, :c, :d, :e)"),
                dict(zip("pabcde", row, strict=True)),
            )
    migrate.upgrade(engine)
    with engine.connect() as conn:
        subjects = sorted(r[0] for r in conn.execute(text("SELECT v0 FROM casbin_rule")))
        changes = conn.execute(text("SELECT key, deleted FROM changes ORDER BY revision")).all()
    assert subjects == ["agent:demo-agent", "role:analyst", "user:alice", "user:bob", "user:carol"]
    assert sorted((key, bool(deleted)) for key, deleted in changes) == [
        ("g, alice, role:analyst, ledger", True),
        ("g, user:alice, role:analyst, ledger", False),
        ("p, bob, ledger, agent:demo-agent, invoke, allow", True),
        ("p, user:bob, ledger, agent:demo-agent, invoke, allow", False),
    ]
    migrate.downgrade(engine, "0004")
    with engine.connect() as conn:
        subjects = sorted(r[0] for r in conn.execute(text("SELECT v0 FROM casbin_rule")))
    assert subjects == ["agent:demo-agent", "alice", "bob", "carol", "role:analyst"]
