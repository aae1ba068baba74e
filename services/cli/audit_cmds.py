"""`harness audit query|lineage|export|verify`: reading and checking the hash-chained audit log.

These talk to the audit service: directly at HARNESS_AUDIT_ADDR (with the ops certificate, as the
registry commands do at HARNESS_REGISTRY_ADDR), else through Envoy's front door (HARNESS_ADDR).
Reading needs a user with the admin or auditor role (`--user`, `--token`, HARNESS_TOKEN).
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from harness.audit.v1 import audit_pb2
from harness.audit.v1.audit_pb2_grpc import AuditStub
from harness.common.v1 import common_pb2

from services.cli import output
from services.cli.audit_offline import ExportError, verify_export
from services.cli.base import PAGE_SIZE, Ctx, UsageError, enum_arg
from services.common.checkpoints import FileWitness, WitnessError, load_public_key

DIRECT_ADDR_ENV = "HARNESS_AUDIT_ADDR"
DECISION = enum_arg(common_pb2.Decision)
EVENT_KIND = enum_arg(common_pb2.AuditEventKind)
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
FORMATS = {"jsonl": audit_pb2.EXPORT_FORMAT_JSONL, "csv": audit_pb2.EXPORT_FORMAT_CSV}


def parse_time(text: str, now: datetime | None = None) -> Timestamp:
    """`2h`, `30m`, `7d` ago, or an ISO-8601 time (UTC when no zone is given)."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(text.strip())
    if m:
        at = now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    else:
        try:
            at = datetime.fromisoformat(text.strip())
        except ValueError:
            raise UsageError(
                f"time {text!r}: use a duration ago (30m, 2h, 7d) or an ISO time (2024-05-01T12:00)"
            ) from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
    ts = Timestamp()
    ts.FromDatetime(at.astimezone(UTC))
    return ts


def stub(ctx: Ctx) -> AuditStub:
    """An Audit stub on the run's channel (closed by ctx.close())."""
    if ctx._channel is None:
        ctx._channel = ctx.conn.channel()
    return AuditStub(ctx._channel)


def build_filter(args: argparse.Namespace) -> audit_pb2.AuditFilter:
    flt = audit_pb2.AuditFilter(
        user=args.user_filter or "",
        agent=args.agent or "",
        agent_version=args.agent_version or "",
        session_id=args.session or "",
        step_id=args.step or "",
        trace_id=args.trace or "",
        request_id=args.request or "",
        tool=args.tool or "",
        action=args.action or "",
        object=args.resource or "",
        decision=args.decision or 0,
        kind=args.kind or 0,
    )
    if args.since:
        flt.start_time.CopyFrom(parse_time(args.since))
    if args.until:
        flt.end_time.CopyFrom(parse_time(args.until))
    return flt


def _short(enum_type, value: int) -> str:
    return output.enum_short(enum_type, value)


def record_row(r: audit_pb2.AuditRecord) -> list[object]:
    ev = r.event
    agent = ev.actor.agent + (f"@{ev.actor.agent_version}" if ev.actor.agent_version else "")
    return [
        r.sequence,
        output.when(ev.time),
        _short(common_pb2.AuditEventKind, ev.kind),
        ev.actor.user,
        agent,
        ev.correlation.step_id,
        ev.tool or ev.model or ev.object,
        ev.action,
        _short(common_pb2.Decision, ev.decision),
        ev.correlation.trace_id,
    ]


RECORD_HEADERS = ("SEQ", "TIME", "KIND", "USER", "AGENT", "STEP", "TARGET", "ACTION", "DECISION", "TRACE")


def audit_query(ctx: Ctx, args: argparse.Namespace) -> int:
    """Matching records oldest first, following pages up to --limit (0 = all)."""
    if args.limit < 0:
        raise UsageError("--limit must be >= 0 (0 = all)")
    flt = build_filter(args)
    s = stub(ctx)
    out = audit_pb2.QueryResponse()
    token = ""
    while True:
        want = PAGE_SIZE if not args.limit else min(PAGE_SIZE, args.limit - len(out.records))
        req = audit_pb2.QueryRequest(
            filter=flt, page=common_pb2.PageRequest(page_size=want, page_token=token)
        )
        resp = s.Query(req, metadata=ctx.conn.metadata(), timeout=ctx.conn.timeout_s)
        out.records.extend(resp.records)
        token = resp.page.next_page_token
        if not token or (args.limit and len(out.records) >= args.limit):
            break
    out.page.next_page_token = token  # non-empty when --limit cut the listing short
    return ctx.emit(out, lambda r: output.table(RECORD_HEADERS, [record_row(x) for x in r.records]))


def print_tree(nodes, indent: str = "", out=None) -> None:
    out = out or sys.stdout
    for i, node in enumerate(nodes):
        last = i == len(nodes) - 1
        line = node.label
        if node.HasField("record"):
            ev = node.record.event
            extra = [f"#{node.record.sequence}", output.when(ev.time)]
            if ev.rule:
                extra.append(f"rule={ev.rule!r}")
            if ev.status:
                extra.append(f"status={ev.status}")
            line += "  (" + " ".join(x for x in extra if x) + ")"
        print(f"{indent}{'`-- ' if last else '|-- '}{line}", file=out)
        print_tree(node.children, indent + ("    " if last else "|   "), out)


def audit_lineage(ctx: Ctx, args: argparse.Namespace) -> int:
    if not (args.trace or args.session):
        raise UsageError("audit lineage: give --trace and/or --session")
    req = audit_pb2.LineageRequest(trace_id=args.trace or "", session_id=args.session or "")
    resp = stub(ctx).Lineage(req, metadata=ctx.conn.metadata(), timeout=ctx.conn.timeout_s)

    def human(r: audit_pb2.LineageResponse) -> None:
        if not r.roots:
            print("(none)")
            return
        print_tree(r.roots)
        if r.truncated:
            print(f"(truncated: showing the first {r.record_count} records)")

    return ctx.emit(resp, human)


def audit_export(ctx: Ctx, args: argparse.Namespace) -> int:
    """Writes the server's JSONL or CSV stream to stdout (or --out) as it arrives."""
    req = audit_pb2.ExportRequest(filter=build_filter(args), format=FORMATS[args.format])
    # No deadline: a whole-log export may take longer than one RPC's usual timeout.
    stream = stub(ctx).Export(req, metadata=ctx.conn.metadata())
    if args.out:
        with open(args.out, "wb") as f:
            for chunk in stream:
                f.write(chunk.data)
    else:
        sink = sys.stdout.buffer
        sys.stdout.flush()
        for chunk in stream:
            sink.write(chunk.data)
        sink.flush()
    return 0


# Exit codes of `audit verify`, one per verdict (1 stays "the call failed", 2 "bad usage").
VERIFY_EXIT = {
    audit_pb2.VERIFY_FAILURE_UNSPECIFIED: 0,
    audit_pb2.VERIFY_FAILURE_HASH_MISMATCH: 10,
    audit_pb2.VERIFY_FAILURE_LINK_BROKEN: 11,
    audit_pb2.VERIFY_FAILURE_MISSING_RECORD: 12,
    audit_pb2.VERIFY_FAILURE_TRUNCATED: 13,
    audit_pb2.VERIFY_FAILURE_REWRITTEN: 14,
    audit_pb2.VERIFY_FAILURE_FORGED_APPEND: 15,
    audit_pb2.VERIFY_FAILURE_CHECKPOINT_MISSING: 16,
}
VERIFY_HEADLINE = {
    audit_pb2.VERIFY_FAILURE_HASH_MISMATCH: "a record was changed",
    audit_pb2.VERIFY_FAILURE_LINK_BROKEN: "a record's link to its predecessor is broken",
    audit_pb2.VERIFY_FAILURE_MISSING_RECORD: "records are missing from the middle of the log",
    audit_pb2.VERIFY_FAILURE_TRUNCATED: "the log was TRUNCATED",
    audit_pb2.VERIFY_FAILURE_REWRITTEN: "the log was REWRITTEN",
    audit_pb2.VERIFY_FAILURE_FORGED_APPEND: "records were APPENDED outside the audit service",
    audit_pb2.VERIFY_FAILURE_CHECKPOINT_MISSING: "NO signed CHECKPOINT to check the log against",
}


def audit_verify(ctx: Ctx, args: argparse.Namespace) -> int:
    """Exit 0 only when every checked record recomputes and links and the log matches its latest
    signed checkpoint; else the verdict's own exit code (VERIFY_EXIT), naming the record."""
    if args.from_sequence < 0:
        raise UsageError("--from must be >= 0")
    if args.export:
        resp = _verify_offline(args)
    else:
        req = audit_pb2.VerifyRequest(from_sequence=args.from_sequence)
        resp = stub(ctx).Verify(req, metadata=ctx.conn.metadata(), timeout=max(ctx.conn.timeout_s, 300.0))
    ctx.emit(resp, _print_verdict)
    return VERIFY_EXIT.get(resp.failure, 1) if not resp.ok else 0


def _print_verdict(r: audit_pb2.VerifyResponse) -> None:
    anchor = ""
    if r.HasField("checkpoint"):
        c = r.checkpoint
        anchor = (
            f"; matches the checkpoint of record {c.sequence} signed {output.when(c.time)} (key {c.key_id})"
        )
    if r.ok:
        print(f"audit chain intact: {r.checked} records checked{anchor}")
        return
    headline = VERIFY_HEADLINE.get(r.failure, "the chain is broken")
    print(f"audit chain BROKEN: {headline} ({_short(audit_pb2.VerifyFailure, r.failure)}, record {r.first_broken_sequence}"
          + (f", event {r.first_broken_event_id}" if r.first_broken_event_id else "") + ")")  # fmt: skip
    print(f"  {r.reason}")
    if r.expected or r.found:
        print(f"  expected: {r.expected}\n  found:    {r.found}")
    print(f"  {r.checked} records verified")


def _verify_offline(args: argparse.Namespace) -> audit_pb2.VerifyResponse:
    if not (args.witness and args.public_key):
        raise UsageError(
            "audit verify --export needs --witness DIR and --public-key PEM (the service's <key>.pub)"
        )
    try:
        witness = FileWitness(args.witness)
        key = load_public_key(args.public_key)
        with open(args.export, "rb") as f:
            v = verify_export(f, witness, key)
    except (OSError, WitnessError, ExportError) as exc:
        raise UsageError(f"audit verify --export: {exc}") from None
    resp = audit_pb2.VerifyResponse(
        ok=v.ok, checked=v.checked, first_broken_sequence=v.sequence, reason=v.reason,
        expected=v.expected, found=v.found,
        failure=audit_pb2.VerifyFailure.Value(f"VERIFY_FAILURE_{v.failure.upper()}") if v.failure else 0,
    )  # fmt: skip
    if v.checkpoint is not None:
        c = v.checkpoint
        resp.checkpoint.sequence, resp.checkpoint.head_hash = c.checkpoint.sequence, c.checkpoint.head_hash
        resp.checkpoint.key_id, resp.checkpoint.witness = c.key_id, witness.url
        resp.checkpoint.time.FromJsonString(c.checkpoint.time)
    return resp


def _filter_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (all that are given must match)")
    g.add_argument("--by-user", dest="user_filter", metavar="USER", help="end user")
    g.add_argument("--agent", help="agent name")
    g.add_argument("--agent-version", metavar="VERSION", help="agent version label")
    g.add_argument("--session", help="session id")
    g.add_argument("--step", help="step id")
    g.add_argument("--trace", help="trace id")
    g.add_argument("--request", help="request id")
    g.add_argument("--tool", help="tool name")
    g.add_argument("--action", help="action (invoke, read, write, delete, ...)")
    g.add_argument("--resource", help="object acted on, e.g. tool:ledger")
    g.add_argument("--decision", type=DECISION, help="allow, deny, pending-approval")
    g.add_argument("--kind", type=EVENT_KIND, help="model-call, tool-call, authz-decision, redaction, ...")
    g.add_argument("--since", help="from this time (inclusive): ISO time or a duration ago (2h)")
    g.add_argument("--until", help="before this time: ISO time or a duration ago")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser("audit", help="audit log: query, lineage, export, verify")
    a = audit.add_subparsers(dest="verb", required=True, metavar="ACTION")
    defaults = {"direct_addr_env": DIRECT_ADDR_ENV, "cli_service": "audit"}
    p = a.add_parser("query", parents=[common], help="records matching filters, oldest first")
    _filter_args(p)
    p.add_argument("--limit", type=int, default=100, help="at most this many records (0 = all; 100)")
    p.set_defaults(handler=audit_query, **defaults)
    p = a.add_parser("lineage", parents=[common], help="one trace or session as a tree")
    p.add_argument("--trace", help="trace id")
    p.add_argument("--session", help="session id")
    p.set_defaults(handler=audit_lineage, **defaults)
    p = a.add_parser("export", parents=[common], help="matching records as JSONL or CSV")
    _filter_args(p)
    p.add_argument("--format", choices=sorted(FORMATS), default="jsonl", help="jsonl (default) or csv")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(handler=audit_export, **defaults)
    p = a.add_parser(
        "verify", parents=[common],
        help="recompute the hash chain and check it against the signed checkpoints; exit 0 only if intact "
        "(10 changed, 11 link broken, 12 missing, 13 truncated, 14 rewritten, 15 forged append, "
        "16 no checkpoint)",
    )  # fmt: skip
    p.add_argument("--from", dest="from_sequence", type=int, default=0, help="first sequence to check")
    p.add_argument("--export", help="verify this JSONL export of the whole log offline, without the service")
    p.add_argument("--witness", help="with --export: a copy of the witness directory (checkpoints.jsonl)")
    p.add_argument("--public-key", help="with --export: the audit service's checkpoint key (<key>.pub)")
    p.set_defaults(handler=audit_verify, **defaults)
