"""`harness audit ...` without a server: parsing, filters, times, the audit address, tree printing."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2

from services.cli.audit_cmds import build_filter, parse_time, print_tree
from services.cli.base import UsageError
from services.cli.connect import ConfigError, resolve
from services.cli.main import build_parser, main


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_subcommands_parse():
    a = _args("audit", "query", "--by-user", "alice", "--agent", "rpa", "--agent-version", "v2", "--session",
              "s1", "--step", "3", "--trace", "t1", "--tool", "ledger", "--action", "delete", "--resource",
              "tool:ledger", "--decision", "deny", "--kind", "tool-call", "--request", "r1", "--user", "carol")  # fmt: skip
    assert a.handler.__name__ == "audit_query" and a.limit == 100 and a.user == "carol"
    flt = build_filter(a)
    assert flt == audit_pb2.AuditFilter(
        user="alice", agent="rpa", agent_version="v2", session_id="s1", step_id="3", trace_id="t1",
        tool="ledger", action="delete", object="tool:ledger", decision=common_pb2.DECISION_DENY,
        kind=common_pb2.AUDIT_EVENT_KIND_TOOL_CALL, request_id="r1",
    )  # fmt: skip
    assert _args("audit", "export").format == "jsonl"
    assert _args("audit", "export", "--format", "csv", "--out", "x.csv").out == "x.csv"
    assert _args("audit", "verify", "--from", "5").from_sequence == 5
    assert _args("audit", "lineage", "--trace", "t1").handler.__name__ == "audit_lineage"
    with pytest.raises(SystemExit):
        _args("audit", "export", "--format", "xml")
    with pytest.raises(SystemExit):
        _args("audit", "query", "--decision", "maybe")


def test_time_filters():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time("2h", now).ToDatetime(tzinfo=UTC) == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert parse_time("2024-05-01T08:30", now).ToDatetime(tzinfo=UTC) == datetime(
        2024, 5, 1, 8, 30, tzinfo=UTC
    )
    assert parse_time("2024-05-01T08:30+08:00").ToDatetime(tzinfo=UTC) == datetime(
        2024, 5, 1, 0, 30, tzinfo=UTC
    )
    with pytest.raises(UsageError, match="duration ago"):
        parse_time("yesterday")
    flt = build_filter(_args("audit", "query", "--since", "2024-05-01", "--until", "2024-05-02"))
    assert flt.HasField("start_time") and flt.end_time.seconds - flt.start_time.seconds == 86400


def _root(tmp_path: Path, **values: str) -> Path:
    (tmp_path / "env").write_text("".join(f"export {k}='{v}'\n" for k, v in values.items()))
    return tmp_path


def test_audit_commands_use_the_audit_address_not_the_registry(tmp_path):
    root = _root(tmp_path, HARNESS_ADDR="localhost:8443", HARNESS_REGISTRY_ADDR="127.0.0.1:50071",
                 HARNESS_AUDIT_ADDR="127.0.0.1:50091", HARNESS_OPS_CERT="o.pem", HARNESS_OPS_KEY="o.key",
                 HARNESS_CA="ca.pem", HARNESS_CERT="agent.pem", HARNESS_KEY="agent.key")  # fmt: skip
    conn = resolve(_args("audit", "verify", "--root", str(root), "--token", "t"), environ={})
    assert (conn.address, conn.cert, conn.token) == ("127.0.0.1:50091", "o.pem", "t")
    assert resolve(_args("teams", "list", "--root", str(root)), environ={}).address == "127.0.0.1:50071"
    # Without HARNESS_AUDIT_ADDR the audit commands go through the front door, never to the registry.
    (tmp_path / "b").mkdir()
    root2 = _root(tmp_path / "b", HARNESS_ADDR="localhost:8443", HARNESS_REGISTRY_ADDR="127.0.0.1:50071")
    conn = resolve(_args("audit", "query", "--root", str(root2)), environ={})
    assert conn.address == "localhost:8443"
    conn = resolve(_args("audit", "query", "--root", str(root2)), environ={"HARNESS_AUDIT_ADDR": "a:1"})
    assert conn.address == "a:1"
    with pytest.raises(ConfigError, match=r"no audit address.*HARNESS_AUDIT_ADDR"):
        resolve(_args("audit", "query", "--root", str(tmp_path / "none")), environ={})


def test_usage_errors_exit_2(capsys, monkeypatch):
    for name in ("HARNESS_ADDR", "HARNESS_AUDIT_ADDR", "HARNESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["audit", "lineage", "--addr", "127.0.0.1:1", "--plaintext"]) == 2
    assert "--trace and/or --session" in capsys.readouterr().err
    assert main(["audit", "query", "--addr", "127.0.0.1:1", "--plaintext", "--since", "soon"]) == 2


def test_unreachable_audit_names_the_service(capsys):
    rc = main(["audit", "verify", "--addr", "127.0.0.1:1", "--plaintext", "--timeout", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("harness: UNAVAILABLE:") and "is the audit up at 127.0.0.1:1" in err


def test_tree_printing():
    leaf = audit_pb2.LineageNode(label="tool:ledger delete deny")
    leaf.record.sequence = 7
    leaf.record.event.rule = "p, r"
    step = audit_pb2.LineageNode(label="step:2", children=[leaf])
    root = audit_pb2.LineageNode(label="user:alice", children=[audit_pb2.LineageNode(label="agent:a@v1",
                                                                                      children=[step])])  # fmt: skip
    out = io.StringIO()
    print_tree([root], out=out)
    assert out.getvalue().splitlines() == [
        "`-- user:alice",
        "    `-- agent:a@v1",
        "        `-- step:2",
        "            `-- tool:ledger delete deny  (#7 rule='p, r')",
    ]
