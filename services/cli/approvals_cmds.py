"""`harness approvals list|show|approve|reject`: the human approvals governed tool calls wait on.

They live in the audit service and are reached the way `harness audit` reaches it: directly at
HARNESS_AUDIT_ADDR (with the ops certificate), else through Envoy (HARNESS_ADDR). Listing needs
the admin, approver or auditor role; approving and rejecting need a user (`--user`, `--token`,
HARNESS_TOKEN) with the admin or approver role, who is recorded as the approver.
"""

from __future__ import annotations

import argparse

from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2

from services.cli import output
from services.cli.audit_cmds import DIRECT_ADDR_ENV, stub
from services.cli.base import PAGE_SIZE, Ctx, UsageError, enum_arg

APPROVAL_STATE = enum_arg(audit_pb2.ApprovalState)
HEADERS = ("ID", "STATE", "CREATED", "EXPIRES", "USER", "AGENT", "TOOL", "ACTION", "RISK", "APPROVER", "NOTE")


def _agent(a: audit_pb2.Approval) -> str:
    return a.requester.agent + (f"@{a.requester.agent_version}" if a.requester.agent_version else "")


def row(a: audit_pb2.Approval) -> list[object]:
    return [
        a.id,
        output.enum_short(audit_pb2.ApprovalState, a.state),
        output.when(a.create_time),
        output.when(a.expire_time),
        a.requester.user,
        _agent(a),
        a.tool,
        a.action,
        output.enum_short(common_pb2.RiskClass, a.risk),
        a.approver,
        a.comment or a.reason,
    ]


def approvals_list(ctx: Ctx, args: argparse.Namespace) -> int:
    """Approvals oldest first (optionally one state), following pages up to --limit (0 = all)."""
    if args.limit < 0:
        raise UsageError("--limit must be >= 0 (0 = all)")
    s = stub(ctx)
    out = audit_pb2.ListApprovalsResponse()
    token = ""
    while True:
        want = PAGE_SIZE if not args.limit else min(PAGE_SIZE, args.limit - len(out.approvals))
        req = audit_pb2.ListApprovalsRequest(
            state=args.state or 0, page=common_pb2.PageRequest(page_size=want, page_token=token)
        )
        resp = s.ListApprovals(req, metadata=ctx.conn.metadata(), timeout=ctx.conn.timeout_s)
        out.approvals.extend(resp.approvals)
        token = resp.page.next_page_token
        if not token or (args.limit and len(out.approvals) >= args.limit):
            break
    out.page.next_page_token = token  # non-empty when --limit cut the listing short
    if args.ids:  # for scripts: APPROVAL=$(harness approvals list --state pending --ids --limit 1)
        print("\n".join(a.id for a in out.approvals))
        return 0
    return ctx.emit(out, lambda r: output.table(HEADERS, [row(a) for a in r.approvals]))


def print_approval(a: audit_pb2.Approval) -> None:
    fields = [
        ("id", a.id),
        ("state", output.enum_short(audit_pb2.ApprovalState, a.state)),
        ("tool", a.tool),
        ("action", a.action),
        ("risk", output.enum_short(common_pb2.RiskClass, a.risk)),
        ("user", a.requester.user),
        ("agent", _agent(a)),
        ("trace", a.correlation.trace_id),
        ("session", a.correlation.session_id),
        ("step", a.correlation.step_id),
        ("reason", a.reason),
        ("arguments", output.to_json(a.arguments).replace("\n", " ") if a.arguments.fields else ""),
        ("requested by", a.requested_by),
        ("created", output.when(a.create_time)),
        ("expires", output.when(a.expire_time)),
        ("approver", a.approver),
        ("comment", a.comment),
        ("decided", output.when(a.decide_time)),
    ]
    for name, value in fields:
        if value:
            print(f"{name + ':':14}{value}")


def approvals_show(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = stub(ctx).GetApproval(
        audit_pb2.GetApprovalRequest(id=args.id), metadata=ctx.conn.metadata(), timeout=ctx.conn.timeout_s
    )
    return ctx.emit(resp, lambda r: print_approval(r.approval))


def _decide(ctx: Ctx, args: argparse.Namespace, approve: bool) -> int:
    req = audit_pb2.DecideApprovalRequest(id=args.id, approve=approve, comment=args.comment or "")
    resp = stub(ctx).DecideApproval(req, metadata=ctx.conn.metadata(), timeout=ctx.conn.timeout_s)

    def human(r: audit_pb2.DecideApprovalResponse) -> None:
        a = r.approval
        verb = output.enum_short(audit_pb2.ApprovalState, a.state)
        print(
            f"approval {a.id} {verb} by {a.approver}: {a.tool} {a.action} for {a.requester.user or '(none)'}"
        )

    return ctx.emit(resp, human)


def approvals_approve(ctx: Ctx, args: argparse.Namespace) -> int:
    return _decide(ctx, args, True)


def approvals_reject(ctx: Ctx, args: argparse.Namespace) -> int:
    return _decide(ctx, args, False)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ap = sub.add_parser("approvals", help="approvals of governed tool calls: list, show, approve, reject")
    a = ap.add_subparsers(dest="verb", required=True, metavar="ACTION")
    defaults = {"direct_addr_env": DIRECT_ADDR_ENV, "cli_service": "audit"}
    p = a.add_parser("list", parents=[common], help="approvals, oldest first")
    p.add_argument(
        "--state", type=APPROVAL_STATE, help="pending, approved, rejected or expired (default: all)"
    )
    p.add_argument("--limit", type=int, default=100, help="at most this many (0 = all; 100)")
    p.add_argument("--ids", action="store_true", help="print only the ids, one a line (for scripts)")
    p.set_defaults(handler=approvals_list, **defaults)
    p = a.add_parser("show", parents=[common], help="one approval with its arguments")
    p.add_argument("id", help="approval id")
    p.set_defaults(handler=approvals_show, **defaults)
    for verb, handler, what in (
        ("approve", approvals_approve, "let the waiting tool call run"),
        ("reject", approvals_reject, "refuse the waiting tool call"),
    ):
        p = a.add_parser(verb, parents=[common], help=f"{what} (admin or approver role)")
        p.add_argument("id", help="approval id")
        p.add_argument("--comment", "-m", default="", help="why (recorded in the audit log)")
        p.set_defaults(handler=handler, **defaults)
