"""Audit tables. Every event field is a column, so Verify recomputes each hash from exactly
what Query returns: tampering with any stored field breaks the chain.

Times are integer microseconds since the Unix epoch (UTC): exact, portable between SQLite and
PostgreSQL, and the unit the canonical encoding uses.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

# Optional strings default to "" (never NULL) so filters and hashing need no NULL handling.
_S = {"nullable": False, "default": ""}

audit_records = Table(
    "audit_records",
    metadata,
    # Assigned by the store as head + 1 under the append lock; the primary key also makes a
    # forked chain (two records with one sequence) impossible.
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    # UNIQUE: the idempotency guarantee for resent events, enforced by the database.
    Column("event_id", String(128), nullable=False, unique=True),
    Column("time_us", BigInteger, nullable=False),
    Column("kind", Integer, nullable=False),
    Column("user", Text, **_S),
    Column("agent", Text, **_S),
    Column("agent_version", Text, **_S),
    Column("project", Text, **_S),
    Column("team", Text, **_S),
    Column("auth_method", Text, **_S),
    Column("request_id", Text, **_S),
    Column("trace_id", Text, **_S),
    Column("session_id", Text, **_S),
    Column("step_id", Text, **_S),
    Column("parent_event_id", Text, **_S),
    Column("object", Text, **_S),
    Column("action", Text, **_S),
    Column("decision", Integer, nullable=False, default=0),
    Column("rule", Text, **_S),
    Column("status", Text, **_S),
    Column("model", Text, **_S),
    Column("tool", Text, **_S),
    Column("source", Text, **_S),
    Column("details", Text, nullable=False, default="{}"),  # canonical JSON of the Struct
    Column("prev_hash", Text, **_S),
    Column("hash", String(64), nullable=False),
    Column("ingest_time_us", BigInteger, nullable=False),
)

# Query filters that are expected to be common (lineage and "who did what" questions).
Index("ix_audit_time", audit_records.c.time_us)
Index("ix_audit_trace", audit_records.c.trace_id)
Index("ix_audit_session", audit_records.c.session_id)
Index("ix_audit_user", audit_records.c.user)
Index("ix_audit_agent", audit_records.c.agent)
Index("ix_audit_request", audit_records.c.request_id)

# Human approvals of governed tool calls. Mutable (pending -> approved/rejected), unlike the log;
# every change is also appended to the chain as an AUDIT_EVENT_KIND_APPROVAL record in the same
# transaction. A pending row past expire_time_us reads as expired; EXPIRED is stored (with its
# audit record) by whoever first sees it: the waiting caller, a late approver, or the sweep.
approvals = Table(
    "approvals",
    metadata,
    # Paging order (oldest first) and page token.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    # Caller's idempotency key ("" = none); unique per requesting principal when set.
    Column("request_key", String(256), **_S),
    Column("requested_by", Text, **_S),
    Column("state", Integer, nullable=False),  # ApprovalState: PENDING, APPROVED, REJECTED or EXPIRED
    Column("user", Text, **_S),
    Column("agent", Text, **_S),
    Column("agent_version", Text, **_S),
    Column("project", Text, **_S),
    Column("team", Text, **_S),
    Column("auth_method", Text, **_S),
    Column("request_id", Text, **_S),
    Column("trace_id", Text, **_S),
    Column("session_id", Text, **_S),
    Column("step_id", Text, **_S),
    Column("parent_event_id", Text, **_S),
    Column("tool", Text, **_S),
    Column("action", Text, **_S),
    Column("risk", Integer, nullable=False, default=0),
    Column("arguments", Text, nullable=False, default="{}"),  # canonical JSON of the Struct
    Column("reason", Text, **_S),
    Column("approver", Text, **_S),
    Column("comment", Text, **_S),
    Column("create_time_us", BigInteger, nullable=False),
    Column("expire_time_us", BigInteger, nullable=False),
    Column("decide_time_us", BigInteger, nullable=False, default=0),
)
Index("ix_approvals_state", approvals.c.state, approvals.c.expire_time_us)
Index("ix_approvals_key", approvals.c.requested_by, approvals.c.request_key)
