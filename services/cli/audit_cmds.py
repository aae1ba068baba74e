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
from services.cli.base import PAGE_SIZE, Ctx, UsageError, enum_arg

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


def audit_verify(ctx: Ctx, args: argparse.Namespace) -> int:
    """Exit 0 only when every checked record recomputes and links; else 1, naming the record."""
    if args.from_sequence < 0:
        raise UsageError("--from must be >= 0")
    req = audit_pb2.VerifyRequest(from_sequence=args.from_sequence)
    resp = stub(ctx).Verify(req, metadata=ctx.conn.metadata(), timeout=max(ctx.conn.timeout_s, 300.0))

    def human(r: audit_pb2.VerifyResponse) -> None:
        if r.ok:
            print(f"audit chain intact: {r.checked} records checked")
            return
        who = f"record {r.first_broken_sequence}"
        if r.first_broken_event_id:
            who += f" (event {r.first_broken_event_id})"
        print(f"audit chain BROKEN at {who}: {_short(audit_pb2.VerifyFailure, r.failure)}")
        print(f"  {r.reason}")
        if r.expected or r.found:
            print(f"  expected: {r.expected}\n  found:    {r.found}")
        print(f"  {r.checked} records before it verified")

    ctx.emit(resp, human)
    return 0 if resp.ok else 1


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
    p = a.add_parser("verify", parents=[common], help="recompute the hash chain; exit 0 only if intact")
    p.add_argument("--from", dest="from_sequence", type=int, default=0, help="first sequence to check")
    p.set_defaults(handler=audit_verify, **defaults)
