"""`harness approvals ...` without a server: parsing, state names, table rows and the detail view."""

from __future__ import annotations

import argparse

import pytest
from google.protobuf import timestamp_pb2
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2

from services.cli.approvals_cmds import print_approval, row
from services.cli.main import build_parser

S = audit_pb2


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_subcommands_parse():
    a = _args("approvals", "list", "--state", "pending", "--user", "bob")
    assert a.handler.__name__ == "approvals_list" and a.state == S.APPROVAL_STATE_PENDING
    assert a.limit == 100 and a.user == "bob" and a.direct_addr_env == "HARNESS_AUDIT_ADDR"
    assert _args("approvals", "list").state is None
    assert _args("approvals", "list", "--state", "expired").state == S.APPROVAL_STATE_EXPIRED
    a = _args("approvals", "approve", "ap-1", "--comment", "ok by finance")
    assert (a.handler.__name__, a.id, a.comment) == ("approvals_approve", "ap-1", "ok by finance")
    a = _args("approvals", "reject", "ap-2", "-m", "no")
    assert (a.handler.__name__, a.id, a.comment) == ("approvals_reject", "ap-2", "no")
    assert _args("approvals", "reject", "ap-2").comment == ""
    assert _args("approvals", "show", "ap-3").handler.__name__ == "approvals_show"


@pytest.mark.parametrize(
    "argv",
    [("approvals", "list", "--state", "maybe"), ("approvals", "approve"), ("approvals",)],
)
def test_bad_input_exits_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as err:
        _args(*argv)
    assert err.value.code == 2
    if "maybe" in argv:
        assert "pending, approved, rejected, expired" in capsys.readouterr().err


def approval() -> S.Approval:
    a = S.Approval(
        id="ap-1",
        requester=common_pb2.Actor(user="alice", agent="rpa-bot", agent_version="v3"),
        correlation=common_pb2.Correlation(trace_id="t1", step_id="2"),
        tool="ledger",
        action="delete",
        risk=common_pb2.RISK_CLASS_DELETE,
        state=S.APPROVAL_STATE_REJECTED,
        approver="bob",
        comment="never",
        reason="needs approval",
        create_time=timestamp_pb2.Timestamp(seconds=1_714_564_800),
    )
    a.arguments.update({"ledger": "FY2024"})
    return a


def test_row_and_detail(capsys):
    assert row(approval()) == ["ap-1", "rejected", "2024-05-01 12:00:00Z", "", "alice", "rpa-bot@v3", "ledger",
                               "delete", "delete", "bob", "never"]  # fmt: skip
    print_approval(approval())
    out = capsys.readouterr().out
    assert "state:        rejected" in out and "approver:     bob" in out and '"ledger": "FY2024"' in out
    assert "decided:" not in out  # unset fields are left out
