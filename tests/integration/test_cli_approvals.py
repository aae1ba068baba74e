"""`harness approvals list|show|approve|reject` against a real audit service on port 0 (found at
HARNESS_AUDIT_ADDR): an approver decides, a second decision and a non-approver are refused, and
`harness audit lineage` shows who decided."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest
from google.protobuf import duration_pb2
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2

from services.cli.main import main
from tests.helpers.audit import start_tls_audit

S = audit_pb2


@dataclass
class Result:
    rc: int
    out: str
    err: str


def ask(step: str, action: str) -> S.RequestApprovalRequest:
    a = S.Approval(
        requester=common_pb2.Actor(user="alice", agent="rpa-bot", agent_version="v3"),
        correlation=common_pb2.Correlation(trace_id="t-ledger", session_id="s1", step_id=step),
        tool="ledger",
        action=action,
        risk=common_pb2.RISK_CLASS_DELETE,
        reason=f"ledger.{action} requires approval",
    )
    a.arguments.update({"ledger": "FY2024"})
    return S.RequestApprovalRequest(approval=a, ttl=duration_pb2.Duration(seconds=600))


@pytest.fixture
async def opened(tmp_path, test_auth):
    """Two approvals the router opened (its own certificate) for alice's calls."""
    mesh = await start_tls_audit(tmp_path, test_auth, certs_dir=tmp_path / "harness" / "certs")
    router = mesh.stub("router")
    ids = [(await router.RequestApproval(ask(str(i), act))).approval.id
           for i, act in enumerate(("delete", "write"), start=1)]  # fmt: skip
    yield mesh, ids
    await mesh.close()


@pytest.fixture
def cli(opened, tmp_path, capsys, monkeypatch, mint_token):
    mesh, _ = opened
    root = tmp_path / "harness"
    (root / "tokens").mkdir(parents=True)
    (root / "env").write_text(
        f"export HARNESS_AUDIT_ADDR='127.0.0.1:{mesh.running.port}'\nexport HARNESS_REGISTRY_ADDR='127.0.0.1:1'\n"
        f"export HARNESS_CA='{mesh.certs.ca_cert}'\n"
    )
    for name, roles in (("bob", ("approver",)), ("carol", ("auditor",)), ("dave", ("analyst",))):
        (root / "tokens" / f"{name}.jwt").write_text(mint_token(name, *roles))
    for name in (
        "HARNESS_ADDR",
        "HARNESS_AUDIT_ADDR",
        "HARNESS_REGISTRY_ADDR",
        "HARNESS_TOKEN",
        "HARNESS_CA",
        "HARNESS_OPS_CERT",
        "HARNESS_OPS_KEY",
        "HARNESS_CERT",
        "HARNESS_KEY",
        "HARNESS_PLAINTEXT",
    ):
        monkeypatch.delenv(name, raising=False)

    async def run(*argv: str, user: str = "bob") -> Result:
        capsys.readouterr()
        rc = await asyncio.to_thread(main, [*argv, "--root", str(root), "--user", user])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return Result(rc, out, err)

    return run


async def test_list_approve_reject_and_lineage(cli, opened):
    _, (delete_id, write_id) = opened
    res = await cli("approvals", "list", "--state", "pending")
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split()[:4] == ["ID", "STATE", "CREATED", "EXPIRES"] and len(lines) == 3
    assert delete_id in lines[1] and "pending" in lines[1] and "rpa-bot@v3" in lines[1]
    ids = await cli("approvals", "list", "--state", "pending", "--ids")
    assert ids.rc == 0 and ids.out.split() == [delete_id, write_id]

    shown = await cli("approvals", "show", delete_id, user="carol")
    assert shown.rc == 0 and "reason:       ledger.delete requires approval" in shown.out

    res = await cli("approvals", "reject", delete_id, "--comment", "never delete a ledger")
    assert res.rc == 0, res.err
    assert res.out.strip() == f"approval {delete_id} rejected by bob: ledger delete for alice"
    res = await cli("approvals", "approve", write_id, "-m", "fine", "--json")
    assert json.loads(res.out)["approval"]["state"] == "APPROVAL_STATE_APPROVED"

    again = await cli("approvals", "approve", delete_id)
    assert again.rc == 1 and "FAILED_PRECONDITION" in again.err and "rejected by bob" in again.err
    missing = await cli("approvals", "reject", "no-such-id")
    assert missing.rc == 1 and "NOT_FOUND" in missing.err
    denied = await cli("approvals", "approve", write_id, user="dave")
    assert denied.rc == 1 and "PERMISSION_DENIED" in denied.err and "approver" in denied.err
    assert (await cli("approvals", "list", user="dave")).rc == 1

    got = json.loads((await cli("approvals", "list", "--state", "rejected", "--json", user="carol")).out)
    assert [a["id"] for a in got["approvals"]] == [delete_id]
    assert (await cli("approvals", "list", "--state", "pending")).out.strip() == "(none)"
    every = json.loads((await cli("approvals", "list", "--limit", "1", "--json")).out)
    assert len(every["approvals"]) == 1 and every["page"]["next_page_token"]

    tree = await cli("audit", "lineage", "--trace", "t-ledger", user="carol")
    assert tree.rc == 0, tree.err
    assert "approval:ledger delete deny by:bob" in tree.out
    assert "approval:ledger write allow by:bob" in tree.out
    assert (await cli("audit", "verify", user="carol")).rc == 0
