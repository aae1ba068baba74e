"""gRPC face of the audit service: access checks, stream handling, metrics. Logic is in store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from prometheus_client import CollectorRegistry

from services.audit import export, lineage
from services.audit.anchor import ChainAnchor
from services.audit.approvals import Approvals
from services.audit.config import DEFAULT_INGEST_SERVICES, AuditConfig
from services.audit.metrics import AuditMetrics
from services.audit.store import AuditStore
from services.common.checkpoints import (
    CHECKPOINT_MISSING,
    FORGED_APPEND,
    REWRITTEN,
    TRUNCATED,
    CheckpointSigner,
    FileWitness,
    open_witness,
)
from services.common.context import Identity, current_identity
from services.common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.common.server import Registrar, RunningServer, registrar, start_server_owning
from services.common.shipping import ShippingLoop

log = logging.getLogger("harness.audit")
EXPIRY_SWEEP_S = 30.0  # how often pending approvals past their expiry are recorded as expired
SERVICE_NAME = audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name
READER_ROLES = frozenset({"admin", "auditor"})
_FAILURES = {
    "hash_mismatch": audit_pb2.VERIFY_FAILURE_HASH_MISMATCH,
    "link_broken": audit_pb2.VERIFY_FAILURE_LINK_BROKEN,
    "missing_record": audit_pb2.VERIFY_FAILURE_MISSING_RECORD,
    TRUNCATED: audit_pb2.VERIFY_FAILURE_TRUNCATED,
    REWRITTEN: audit_pb2.VERIFY_FAILURE_REWRITTEN,
    FORGED_APPEND: audit_pb2.VERIFY_FAILURE_FORGED_APPEND,
    CHECKPOINT_MISSING: audit_pb2.VERIFY_FAILURE_CHECKPOINT_MISSING,
}


def _authenticated(identity: Identity) -> None:
    if not (identity.user or identity.service or identity.agent):
        raise Unauthenticated(
            "the audit service needs a caller identity (service certificate or bearer token)"
        )


def require_writer(identity: Identity, services: frozenset[str]) -> None:
    """Only the Harness services that produce events (their own certificate) append to the log:
    no user, whatever their roles, and no other service (the CLI's certificate included)."""
    _authenticated(identity)
    if identity.service in services and not identity.user:
        return
    who = identity.user or (f"service {identity.service}" if identity.service else f"agent {identity.agent}")
    raise PermissionDenied(
        f"{who} may not write audit events: only the services {', '.join(sorted(services))} may, "
        "with their own certificate"
    )


def require_reader(identity: Identity) -> None:
    """Reading the log (it names users and what they did) needs the admin or auditor role."""
    _authenticated(identity)
    if not READER_ROLES.intersection(identity.roles):
        who = identity.user or identity.service or f"agent {identity.agent}"
        raise PermissionDenied(f"{who} may not read the audit log: it needs the admin or auditor role")


class AuditServicer(audit_pb2_grpc.AuditServicer):
    def __init__(
        self,
        store: AuditStore,
        metrics: AuditMetrics,
        ingest_services: Iterable[str] = DEFAULT_INGEST_SERVICES,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._writers = frozenset(ingest_services)
        self._approvals = Approvals(store)

    async def Ingest(self, request: audit_pb2.IngestRequest, context) -> audit_pb2.IngestResponse:
        """Appends one batch in one transaction.

        A bad event fails the call with INVALID_ARGUMENT naming its index in the batch, and
        nothing of the batch is stored; events already stored count as duplicates.
        """
        require_writer(current_identity(), self._writers)
        try:
            result = await self._store.ingest(request.events)
        except InvalidArgument:
            self._metrics.ingest_rejected.inc()
            raise
        self._metrics.records.inc(result.accepted)
        self._metrics.duplicates.inc(result.duplicates)
        return audit_pb2.IngestResponse(accepted=result.accepted, duplicates=result.duplicates)

    async def Query(self, request: audit_pb2.QueryRequest, context) -> audit_pb2.QueryResponse:
        """Records matching every set filter field, oldest first; page token = last sequence."""
        require_reader(current_identity())
        records, token = await self._store.query(request.filter, request.page)
        return audit_pb2.QueryResponse(records=records, page=common_pb2.PageResponse(next_page_token=token))

    async def Lineage(self, request: audit_pb2.LineageRequest, context) -> audit_pb2.LineageResponse:
        """Every record of one trace and/or session as a tree: user -> agent@version -> step -> calls."""
        require_reader(current_identity())
        records, truncated = await self._store.lineage_records(request.trace_id, request.session_id)
        return audit_pb2.LineageResponse(
            roots=lineage.build_tree(records), record_count=len(records), truncated=truncated
        )

    async def Export(self, request: audit_pb2.ExportRequest, context):
        """Streams every matching record (oldest first) as JSONL or CSV chunks on row boundaries."""
        require_reader(current_identity())
        try:
            fmt = export.normalize_format(request.format)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        async for chunk in export.chunks(self._store.scan(request.filter), fmt):
            yield audit_pb2.ExportResponse(data=chunk)

    async def Verify(self, request: audit_pb2.VerifyRequest, context) -> audit_pb2.VerifyResponse:
        """Recomputes the chain from `from_sequence`, checks it against the latest signed
        checkpoint, and names the first broken record."""
        require_reader(current_identity())
        result = await self._store.verify(request.from_sequence)
        self._metrics.verifications.labels("ok" if result.ok else "broken").inc()
        checkpoint = None
        if result.checkpoint is not None and self._store.anchor is not None:
            c = result.checkpoint
            checkpoint = audit_pb2.Checkpoint(
                sequence=c.checkpoint.sequence, head_hash=c.checkpoint.head_hash, key_id=c.key_id,
                witness=self._store.anchor.witness.url,
            )  # fmt: skip
            checkpoint.time.FromJsonString(c.checkpoint.time)
        return audit_pb2.VerifyResponse(
            checkpoint=checkpoint,
            ok=result.ok,
            checked=result.checked,
            first_broken_sequence=result.first_broken_sequence,
            reason=result.reason,
            first_broken_event_id=result.first_broken_event_id,
            failure=_FAILURES.get(result.failure, audit_pb2.VERIFY_FAILURE_UNSPECIFIED),
            expected=result.expected,
            found=result.found,
        )

    # ---- approvals (logic and access checks in approvals.py) ----

    async def expire_approvals(self) -> float | None:
        """One round of the expiry sweep (ShippingLoop step): 0 = more are due at once."""
        batch = 100
        return 0 if await self._approvals.expire_due(batch) >= batch else None

    async def RequestApproval(
        self, request: audit_pb2.RequestApprovalRequest, context
    ) -> audit_pb2.RequestApprovalResponse:
        """Opens a pending approval (Harness services and admins); audited as an APPROVAL record."""
        approval = await self._approvals.request(current_identity(), request)
        return audit_pb2.RequestApprovalResponse(approval=approval)

    async def GetApproval(
        self, request: audit_pb2.GetApprovalRequest, context
    ) -> audit_pb2.GetApprovalResponse:
        """One approval; with `wait`, long-polls (up to 60 s) while it is pending."""
        wait_us = request.wait.seconds * 1_000_000 + request.wait.nanos // 1000
        approval = await self._approvals.get(current_identity(), request.id, wait_us)
        return audit_pb2.GetApprovalResponse(approval=approval)

    async def ListApprovals(
        self, request: audit_pb2.ListApprovalsRequest, context
    ) -> audit_pb2.ListApprovalsResponse:
        """Approvals oldest first, optionally of one state; page token = last row."""
        items, token = await self._approvals.list(current_identity(), request.state, request.page)
        return audit_pb2.ListApprovalsResponse(
            approvals=items, page=common_pb2.PageResponse(next_page_token=token)
        )

    async def DecideApproval(
        self, request: audit_pb2.DecideApprovalRequest, context
    ) -> audit_pb2.DecideApprovalResponse:
        """Approves or rejects a pending approval as the calling user (admin or approver role)."""
        approval = await self._approvals.decide(
            current_identity(), request.id, request.approve, request.comment
        )
        return audit_pb2.DecideApprovalResponse(approval=approval)


def open_anchor(config: AuditConfig) -> ChainAnchor:
    """The witness and signing key of the config (the key is created on first start). Blocking."""
    witness = open_witness(config.witness_url())
    if isinstance(witness, FileWitness):
        witness.create()
    signer = CheckpointSigner.load_or_create(config.witness_key_path())
    return ChainAnchor(witness, signer, lambda: time.time_ns() // 1000)


def register(servicer: AuditServicer) -> Registrar:
    """Registrar for start_server: adds the Audit service and returns its name."""
    return registrar(audit_pb2_grpc.add_AuditServicer_to_server, servicer, SERVICE_NAME)


async def start_audit(
    config: AuditConfig, *, metrics_registry: CollectorRegistry | None = None
) -> RunningServer:
    """Opens the store and starts the server; the store closes when the server stops."""
    registry = metrics_registry or CollectorRegistry()
    store = await AuditStore.open(config.db_url, await asyncio.to_thread(open_anchor, config))
    servicer = AuditServicer(store, AuditMetrics(registry, store), config.ingest_services)
    running = await start_server_owning(
        config.server, register(servicer), store.close, metrics_registry=registry
    )
    sweep = ShippingLoop(
        servicer.expire_approvals, name="approval-expiry", log=log, poll_s=EXPIRY_SWEEP_S,
        failing_message="recording expired approvals failed (will retry): %s",
    )  # fmt: skip
    sweep.start()
    running.on_stop(sweep.stop)  # before the store closes (on_stop runs in reverse)
    return running
