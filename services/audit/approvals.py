"""Human approvals of governed tool calls (core code, no gRPC).

A Harness service (the router) or an admin opens an approval for one tool call; a user with the
admin or approver role approves or rejects it; nobody deciding before expire_time makes it
EXPIRED. Every opening and every decision is appended to the hash-chained log as an
AUDIT_EVENT_KIND_APPROVAL record in the same transaction as the state change, with the
requester's actor and correlation, so a Lineage query of the trace shows who decided and why.

The approval's record carries the correlation the requester gave, parent_event_id included: the
router sets it to the tool call's audit event id so lineage hangs the approval under that call.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from sqlalchemy import and_, insert, or_, select, update

from services.audit.approval_access import (
    requesting_user,
    require_approval_reader,
    require_decider,
    require_requester,
)
from services.audit.models import approvals
from services.audit.store import AuditStore, parse_page
from services.common import audit_chain as chain
from services.common.context import Identity
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.common.limits import check_struct

A = approvals.c
S = audit_pb2
DEFAULT_TTL_US = 15 * 60 * 1_000_000
MAX_TTL_US = 7 * 24 * 3600 * 1_000_000
MAX_WAIT_US = 60 * 1_000_000
POLL_S = 0.5  # how often a long poll re-reads the database (decisions made by another replica)
MAX_ARGUMENTS = 64 * 1024  # bytes of canonical JSON
MAX_TEXT = 4096  # reason, comment
SOURCE = "audit"
_ACTOR = chain.ACTOR_FIELDS
_CORR = chain.CORRELATION_FIELDS


def state_name(state: int) -> str:
    """APPROVAL_STATE_PENDING -> "pending"."""
    return S.ApprovalState.Name(state).removeprefix("APPROVAL_STATE_").lower()


def _duration_us(d: duration_pb2.Duration) -> int:
    return d.seconds * 1_000_000 + d.nanos // 1000


def _struct_json(s: struct_pb2.Struct) -> str:
    return json.dumps(json_format.MessageToDict(s), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def effective_state(row: Any, now_us: int) -> int:
    """The state a row reads as: a pending one past its expiry is EXPIRED."""
    if row.state == S.APPROVAL_STATE_PENDING and now_us >= row.expire_time_us:
        return S.APPROVAL_STATE_EXPIRED
    return row.state


def to_approval(row: Any, now_us: int) -> audit_pb2.Approval:
    m = row._mapping
    a = audit_pb2.Approval(
        id=m["id"],
        requester=common_pb2.Actor(**{f: m[f] for f in _ACTOR}),
        correlation=common_pb2.Correlation(**{f: m[f] for f in _CORR}),
        tool=m["tool"],
        action=m["action"],
        risk=m["risk"],
        state=effective_state(row, now_us),
        approver=m["approver"],
        comment=m["comment"],
        create_time=chain.us_to_ts(m["create_time_us"]),
        expire_time=chain.us_to_ts(m["expire_time_us"]),
        reason=m["reason"],
        requested_by=m["requested_by"],
    )
    json_format.ParseDict(json.loads(m["arguments"] or "{}"), a.arguments)
    if m["decide_time_us"]:
        a.decide_time.CopyFrom(chain.us_to_ts(m["decide_time_us"]))
    return a


def approval_event(a: audit_pb2.Approval, what: str, time_us: int) -> common_pb2.AuditEvent:
    """The audit record of opening ("requested") or deciding ("approved"/"rejected") an approval.

    Actor and correlation are the requester's, so the record lands in the tool call's lineage
    (under correlation.parent_event_id when the router set it); approval id, approver and comment
    are in details."""
    decision = {
        "requested": common_pb2.DECISION_PENDING_APPROVAL,
        "approved": common_pb2.DECISION_ALLOW,
        "rejected": common_pb2.DECISION_DENY,
        "expired": common_pb2.DECISION_DENY,  # nobody approved in time: the call did not run
    }[what]
    ev = common_pb2.AuditEvent(
        event_id=f"approval-{a.id}-{what}",  # deterministic: one record per transition
        time=chain.us_to_ts(time_us),
        kind=common_pb2.AUDIT_EVENT_KIND_APPROVAL,
        actor=a.requester,
        correlation=a.correlation,
        object=f"tool:{a.tool}",
        action=a.action,
        decision=decision,
        tool=a.tool,
        source=SOURCE,
    )
    details: dict[str, Any] = {
        "approval_id": a.id,
        "event": what,
        "state": state_name(a.state),
        "requested_by": a.requested_by,
        "expire_time": chain.rfc3339(chain.ts_to_us(a.expire_time)),
    }
    if a.risk:
        details["risk"] = common_pb2.RiskClass.Name(a.risk).removeprefix("RISK_CLASS_").lower()
    if what == "requested":
        details["reason"] = a.reason
    elif what == "expired":
        details["comment"] = "nobody decided before the approval expired; the call did not run"
    else:
        details["approver"] = a.approver
        details["comment"] = a.comment
    ev.details.update(details)
    return ev


class Approvals:
    """Approvals stored in the audit database next to the chain they are recorded in."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store
        self._changed = asyncio.Event()  # set (and replaced) whenever this process decides one

    # ---- request ----

    async def request(self, identity: Identity, req: audit_pb2.RequestApprovalRequest) -> audit_pb2.Approval:
        requested_by = require_requester(identity)
        a = req.approval
        if not a.tool:
            raise InvalidArgument("approval.tool is required")
        if not a.action:
            raise InvalidArgument("approval.action is required")
        if len(a.reason) > MAX_TEXT:
            raise InvalidArgument(f"approval.reason is longer than {MAX_TEXT} characters")
        if len(req.request_key) > 256:
            raise InvalidArgument("request_key is longer than 256 characters")
        ttl = _duration_us(req.ttl) if req.HasField("ttl") else DEFAULT_TTL_US
        if ttl <= 0:
            raise InvalidArgument("ttl must be positive")
        if ttl > MAX_TTL_US:
            raise InvalidArgument("ttl must be at most 7 days")
        check_struct("approval.arguments", a.arguments, max_bytes=MAX_ARGUMENTS)
        arguments = _struct_json(a.arguments)
        if len(arguments.encode()) > MAX_ARGUMENTS:
            raise InvalidArgument(f"approval.arguments is larger than {MAX_ARGUMENTS} bytes of JSON")
        row = {f: getattr(a.requester, f) for f in _ACTOR}
        row["user"] = requesting_user(identity, a.requester.user)
        row.update({f: getattr(a.correlation, f) for f in _CORR})
        row.update(
            id=str(uuid.uuid4()),
            request_key=req.request_key,
            requested_by=requested_by,
            state=S.APPROVAL_STATE_PENDING,
            tool=a.tool,
            action=a.action,
            risk=a.risk,
            arguments=arguments,
            reason=a.reason,
            approver="",
            comment="",
            decide_time_us=0,
        )
        return await asyncio.to_thread(self._request_sync, row, ttl)

    def _request_sync(self, row: dict[str, Any], ttl_us: int) -> audit_pb2.Approval:
        store = self._store
        now = store.now_us()
        row.update(create_time_us=now, expire_time_us=now + ttl_us)
        with store.chain_transaction() as conn:
            if row["request_key"]:
                existing = conn.execute(
                    select(approvals).where(
                        A.requested_by == row["requested_by"], A.request_key == row["request_key"]
                    )
                ).first()
                if existing is not None:  # a retry of a request that was already opened
                    return to_approval(existing, now)
            conn.execute(insert(approvals).values(**row))
            stored = conn.execute(select(approvals).where(A.id == row["id"])).one()
            approval = to_approval(stored, now)
            event = approval_event(approval, "requested", now)
            store.append_rows(conn, [chain.row_from_event(event, now)], now)
        return approval

    # ---- read ----

    async def get(self, identity: Identity, approval_id: str, wait_us: int = 0) -> audit_pb2.Approval:
        """The approval; with wait_us > 0, waits (capped) while it is pending for a decision or expiry."""
        require_approval_reader(identity)
        if not approval_id:
            raise InvalidArgument("id is required")
        if wait_us < 0:
            raise InvalidArgument("wait must not be negative")
        store = self._store
        deadline = store.now_us() + min(wait_us, MAX_WAIT_US)
        while True:
            changed = self._changed
            approval = await asyncio.to_thread(self._get_sync, approval_id)
            if approval.state == S.APPROVAL_STATE_EXPIRED:
                await asyncio.to_thread(self._expire_sync, [approval_id], 1)  # on record now
                return approval
            if approval.state != S.APPROVAL_STATE_PENDING:
                return approval
            now = store.now_us()
            until = min(deadline, chain.ts_to_us(approval.expire_time))
            if now >= until:
                return approval
            try:
                await asyncio.wait_for(changed.wait(), timeout=min(POLL_S, (until - now) / 1e6))
            except TimeoutError:
                pass

    def _get_sync(self, approval_id: str) -> audit_pb2.Approval:
        with self._store.engine.connect() as conn:
            row = conn.execute(select(approvals).where(A.id == approval_id)).first()
        if row is None:
            raise NotFound(f"approval {approval_id!r} not found")
        return to_approval(row, self._store.now_us())

    async def list(
        self, identity: Identity, state: int = 0, page: common_pb2.PageRequest | None = None
    ) -> tuple[list[audit_pb2.Approval], str]:
        """Approvals oldest first, optionally of one state; and the next page token."""
        require_approval_reader(identity)
        if state and state not in S.ApprovalState.values():
            raise InvalidArgument(f"state {state} is not an ApprovalState")
        size, after = parse_page(page or common_pb2.PageRequest())
        now = self._store.now_us()
        conds = [A.seq > after]
        if state == S.APPROVAL_STATE_PENDING:
            conds += [A.state == S.APPROVAL_STATE_PENDING, A.expire_time_us > now]
        elif state == S.APPROVAL_STATE_EXPIRED:  # stored as expired, or pending past its expiry
            conds.append(
                or_(
                    A.state == S.APPROVAL_STATE_EXPIRED,
                    and_(A.state == S.APPROVAL_STATE_PENDING, A.expire_time_us <= now),
                )
            )
        elif state:
            conds.append(A.state == state)
        stmt = select(approvals).where(*conds).order_by(A.seq).limit(size + 1)

        def run():
            with self._store.engine.connect() as conn:
                return conn.execute(stmt).all()

        rows = await asyncio.to_thread(run)
        more = len(rows) > size
        rows = rows[:size]
        return [to_approval(r, now) for r in rows], (str(rows[-1].seq) if more else "")

    # ---- decide ----

    async def decide(
        self, identity: Identity, approval_id: str, approve: bool, comment: str
    ) -> audit_pb2.Approval:
        approver = require_decider(identity)
        if not approval_id:
            raise InvalidArgument("id is required")
        if len(comment) > MAX_TEXT:
            raise InvalidArgument(f"comment is longer than {MAX_TEXT} characters")
        approval = await asyncio.to_thread(self._decide_sync, approval_id, approve, comment, approver)
        self._changed.set()
        self._changed = asyncio.Event()
        return approval

    def _decide_sync(
        self, approval_id: str, approve: bool, comment: str, approver: str
    ) -> audit_pb2.Approval:
        store = self._store
        with store.chain_transaction() as conn:
            now = store.now_us()
            row = conn.execute(select(approvals).where(A.id == approval_id)).first()
            if row is None:
                raise NotFound(f"approval {approval_id!r} not found")
            current = effective_state(row, now)
            if current == S.APPROVAL_STATE_PENDING:
                if approver in (row.user, row.requested_by):
                    raise PermissionDenied(
                        f"{approver} may not decide an approval they requested (four eyes)"
                    )
                new_state = S.APPROVAL_STATE_APPROVED if approve else S.APPROVAL_STATE_REJECTED
                return self._settle(conn, row, new_state, now, approver=approver, comment=comment)
            if current == S.APPROVAL_STATE_EXPIRED:
                self._settle(conn, row, current, now)  # commits: the expiry is on record either way
        by = f" by {row.approver}" if row.approver else ""
        raise FailedPrecondition(
            f"approval {approval_id} is {state_name(current)}{by}: only a pending approval can be decided"
            + (" (nobody decided before it expired; the caller was told and must ask again)"
               if current == S.APPROVAL_STATE_EXPIRED else ""),
            trailers={"approval-state": state_name(current)},
        )  # fmt: skip

    def _settle(self, conn, row: Any, state: int, now: int, approver: str = "", comment: str = ""):
        """Stores the approval's final state and appends its audit record (in the caller's chain
        transaction). EXPIRED is stored (and audited) once, by whoever first sees it expired."""
        values: dict[str, Any] = {"state": state}
        if state != S.APPROVAL_STATE_EXPIRED:
            values.update(approver=approver, comment=comment, decide_time_us=now)
        done = conn.execute(
            update(approvals).where(A.id == row.id, A.state == S.APPROVAL_STATE_PENDING).values(**values)
        )
        settled = to_approval(conn.execute(select(approvals).where(A.id == row.id)).one(), now)
        if done.rowcount:
            event = approval_event(settled, state_name(state), now)
            self._store.append_rows(conn, [chain.row_from_event(event, now)], now)
        return settled

    def _expire_sync(self, approval_ids: list[str] | None, limit: int) -> int:
        """Records the expiry of pending approvals past their expire time (of `approval_ids`, or
        any up to `limit`); returns how many."""
        store = self._store
        with store.chain_transaction() as conn:
            now = store.now_us()
            conds = [A.state == S.APPROVAL_STATE_PENDING, A.expire_time_us <= now]
            if approval_ids is not None:
                conds.append(A.id.in_(approval_ids))
            rows = conn.execute(select(approvals).where(*conds).order_by(A.seq).limit(limit)).all()
            for row in rows:
                self._settle(conn, row, S.APPROVAL_STATE_EXPIRED, now)
        return len(rows)

    async def expire_due(self, limit: int = 100) -> int:
        """Records every pending approval that expired (the service's sweep); returns how many."""
        return await asyncio.to_thread(self._expire_sync, None, limit)
