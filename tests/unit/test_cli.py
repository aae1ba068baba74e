"""The `harness` CLI without a server: argument parsing, connection settings, formatting, paging."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import pytest
from google.protobuf import json_format
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb

from services.cli import output
from services.cli.agent_cmds import build_agent, parse_metadata, parse_pii, parse_weights
from services.cli.base import Ctx, UsageError
from services.cli.catalog_cmds import policy_rule
from services.cli.connect import ConfigError, Connection, read_env_file, resolve
from services.cli.main import build_parser, main
from services.cli.tenancy_cmds import parse_expiry


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


# --- parsing ----------------------------------------------------------------------------------


def test_up_is_unchanged():
    args = _args("up")
    assert args.func.__name__ == "_up" and not hasattr(args, "handler")
    assert (args.root, args.demo, args.timeout, args.free_ports) == (
        ".harness",
        "compose/demo.yaml",
        60.0,
        False,
    )
    assert _args("up", "--free-ports", "--timeout", "5").timeout == 5.0


def test_agent_create_flags_build_the_message():
    args = _args(
        "agents", "create", "risk", "--project", "ledger", "--type", "realtime-risk", "--slo-class", "batch",
        "--e2e-ms", "900", "--pii", "phone", "--pii", "email=drop", "--rpm", "60", "--json",
    )  # fmt: skip
    agent = build_agent(args)
    assert agent.type == common_pb2.AGENT_TYPE_REALTIME_RISK and agent.project == "ledger"
    assert agent.slo.slo_class == common_pb2.SLO_CLASS_BATCH and agent.slo.e2e_ms == 900
    assert [(p.kind, p.mode) for p in agent.data_policy.pii] == [("phone", 0), ("email", pb.MASK_MODE_DROP)]
    assert agent.rpm_limit == 60 and args.json is True


def test_state_and_filters_parse_short_enum_names():
    assert _args("agents", "state", "a", "DRAINING").state == common_pb2.AGENT_STATE_DRAINING
    args = _args("agents", "list", "--state", "online", "--type", "code")
    assert (args.state, args.type) == (common_pb2.AGENT_STATE_ONLINE, common_pb2.AGENT_TYPE_CODE)


def test_bad_enum_is_a_usage_error_listing_choices(capsys):
    with pytest.raises(SystemExit) as info:
        _args("agents", "state", "a", "paused")
    assert info.value.code == 2
    assert "registered, online, draining, offline, retired" in capsys.readouterr().err


def test_traffic_weights():
    weights = parse_weights(["v1=90", " v2 = 10 "])
    assert [(w.version, w.weight) for w in weights] == [("v1", 90), ("v2", 10)]
    for bad, msg in ((["v1"], "NAME=VALUE"), (["v1=x"], "whole number"), (["v1=50", "v1=50"], "twice")):
        with pytest.raises(UsageError, match=msg):
            parse_weights(bad)
    assert _args("traffic", "set", "a", "v1=90", "v2=10").weights == ["v1=90", "v2=10"]


def test_pii_and_metadata():
    with pytest.raises(UsageError, match="mask mode"):
        parse_pii(["phone=blur"])
    meta = parse_metadata(["git=abc123", "n=3", "canary=true", "tags=[1, 2]"])
    assert json_format.MessageToDict(meta) == {"git": "abc123", "n": 3, "canary": True, "tags": [1, 2]}


def test_expiry_durations_and_times():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_expiry("30d", now).ToDatetime(tzinfo=UTC) == datetime(2030, 1, 31, tzinfo=UTC)
    assert parse_expiry("90m", now).ToDatetime(tzinfo=UTC) == datetime(2030, 1, 1, 1, 30, tzinfo=UTC)
    assert parse_expiry("2030-02-01T12:00", now).ToDatetime(tzinfo=UTC) == datetime(
        2030, 2, 1, 12, tzinfo=UTC
    )
    with pytest.raises(UsageError, match="past"):
        parse_expiry("2029-01-01", now)
    with pytest.raises(UsageError, match="duration"):
        parse_expiry("soon", now)


def test_policy_rules():
    assert list(policy_rule("p", ["role:a", "ledger", "agent:x", "invoke"]).values)[-1] == "invoke"
    assert policy_rule("g", ["bob", "role:a", "ledger"]).ptype == "g"
    # `policies list` prints a role assignment as g USER DOMAIN ROLE; add takes that order too.
    assert list(policy_rule("g", ["dave", "ledger", "role:analyst"]).values) == [
        "user:dave",
        "role:analyst",
        "ledger",
    ]
    assert list(policy_rule("g", ["dave", "role:analyst", "ledger"]).values) == [
        "user:dave",
        "role:analyst",
        "ledger",
    ]
    with pytest.raises(UsageError, match="SUBJECT ROLE DOMAIN"):
        policy_rule("g", ["bob", "role:a"])
    with pytest.raises(UsageError, match=r"p \(policy\) or g"):
        policy_rule("q", ["a", "b", "c"])
    args = _args("policies", "check", "bob", "ledger", "agent:x", "invoke", "--exit-code")
    assert (args.subject, args.domain, args.object, args.action, args.exit_code) == (
        "bob", "ledger", "agent:x", "invoke", True,
    )  # fmt: skip


def test_user_limit_flags():
    args = _args("users", "create", "bob", "--rpm", "60", "--tpm", "6000")
    assert (args.rpm, args.tpm) == (60, 6000)
    assert (_args("users", "create", "bob").rpm, _args("users", "create", "bob").tpm) == (0, 0)
    args = _args("users", "limits", "bob", "--tpm", "500", "--user", "alice")
    assert (args.name, args.rpm, args.tpm, args.user) == ("bob", None, 500, "alice")
    assert args.handler.__name__ == "users_limits"


def test_user_limits_without_a_limit_is_a_usage_error():
    args = _args("users", "limits", "bob")
    with pytest.raises(UsageError, match="--rpm and/or --tpm"):
        args.handler(None, args)  # refused before any call


def test_key_owner_is_positional_so_user_still_means_who_acts():
    args = _args("keys", "create", "bob", "--project", "ledger", "--user", "alice")
    assert (args.owner, args.user, args.project) == ("bob", "alice", "ledger")


# --- connection settings ----------------------------------------------------------------------


def test_env_file_parsing(tmp_path):
    (tmp_path / "env").write_text(
        "# comment\nexport HARNESS_ADDR='localhost:8443'\nHARNESS_CA=/x/ca.pem\n"
        "export HARNESS_TOKEN='a.b.c'\nnot a line\n"
    )
    assert read_env_file(tmp_path / "env") == {
        "HARNESS_ADDR": "localhost:8443", "HARNESS_CA": "/x/ca.pem", "HARNESS_TOKEN": "a.b.c",
    }  # fmt: skip
    assert read_env_file(tmp_path / "missing") == {}


def _root(tmp_path, **env: str):
    (tmp_path / "env").write_text("".join(f"export {k}='{v}'\n" for k, v in env.items()))
    return tmp_path


def test_resolve_via_envoy_from_the_up_env_file(tmp_path):
    root = _root(
        tmp_path, HARNESS_ADDR="localhost:8443", HARNESS_CA="ca.pem", HARNESS_CERT="agent.pem",
        HARNESS_KEY="agent.key", HARNESS_TOKEN="tok-alice",
    )  # fmt: skip
    conn = resolve(_args("agents", "list", "--root", str(root)), environ={})
    assert (conn.address, conn.ca, conn.cert, conn.key) == (
        "localhost:8443",
        "ca.pem",
        "agent.pem",
        "agent.key",
    )
    assert conn.metadata() == (("authorization", "Bearer tok-alice"),)
    # The environment beats the file; flags beat both.
    conn = resolve(_args("agents", "list", "--root", str(root)), environ={"HARNESS_TOKEN": "tok-env"})
    assert conn.token == "tok-env"
    conn = resolve(_args("agents", "list", "--root", str(root), "--api-key", "hk_1"), environ={})
    assert conn.metadata() == (("x-api-key", "hk_1"),)
    (root / "tokens").mkdir()
    (root / "tokens" / "bob.jwt").write_text("tok-bob\n")
    conn = resolve(
        _args("agents", "list", "--root", str(root), "--user", "bob", "--timeout", "3"), environ={}
    )
    assert conn.token == "tok-bob" and conn.timeout_s == 3.0
    with pytest.raises(ConfigError, match="'carol'"):
        resolve(_args("agents", "list", "--root", str(root), "--user", "carol"), environ={})


def test_resolve_direct_registry_uses_the_ops_cert(tmp_path):
    root = _root(tmp_path, HARNESS_ADDR="localhost:8443", HARNESS_REGISTRY_ADDR="127.0.0.1:50071",
                 HARNESS_CA="ca.pem", HARNESS_CERT="agent.pem", HARNESS_KEY="agent.key")  # fmt: skip
    services = root / "certs" / "services"
    services.mkdir(parents=True)
    (services / "cli.pem").write_text("x")
    (services / "cli.key").write_text("x")
    conn = resolve(_args("teams", "list", "--root", str(root)), environ={})
    assert (
        conn.address == "127.0.0.1:50071" and conn.cert == str(services / "cli.pem") and conn.ca == "ca.pem"
    )
    # Named ops cert wins over the one found on disk; --addr elsewhere goes back to the agent cert.
    conn = resolve(_args("teams", "list", "--root", str(root)), environ={"HARNESS_OPS_CERT": "o.pem",
                                                                      "HARNESS_OPS_KEY": "o.key"})  # fmt: skip
    assert (conn.cert, conn.key) == ("o.pem", "o.key")
    conn = resolve(_args("teams", "list", "--root", str(root), "--addr", "localhost:8443"), environ={})
    assert (conn.address, conn.cert) == ("localhost:8443", "agent.pem")


def test_resolve_errors_and_plaintext(tmp_path):
    with pytest.raises(ConfigError, match="no registry address"):
        resolve(_args("teams", "list", "--root", str(tmp_path)), environ={})
    with pytest.raises(ConfigError, match="needs its key"):
        resolve(_args("teams", "list", "--addr", "h:1", "--ca", "c", "--cert", "x"), environ={})
    with pytest.raises(ConfigError, match="CA certificate"):
        resolve(_args("teams", "list", "--addr", "h:1", "--cert", "x", "--key", "y"), environ={})
    conn = resolve(_args("teams", "list", "--addr", "h:1", "--ca", "c", "--plaintext"), environ={})
    assert not conn.tls and conn.cert == "" and "plaintext" in conn.describe()
    (tmp_path / "t.jwt").write_text(" tok \n")
    conn = resolve(_args("teams", "list", "--addr", "h:1", "--token", f"@{tmp_path / 't.jwt'}"), environ={})
    assert conn.token == "tok"


def test_missing_config_exits_2_without_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HARNESS_ADDR", raising=False)
    monkeypatch.delenv("HARNESS_REGISTRY_ADDR", raising=False)
    assert main(["agents", "list", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: no registry address") and "Traceback" not in err


def test_unreachable_registry_prints_the_status(capsys):
    rc = main(["teams", "list", "--addr", "127.0.0.1:1", "--plaintext", "--timeout", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("harness: UNAVAILABLE:") and "127.0.0.1:1" in err


# --- output and paging ------------------------------------------------------------------------


def test_table_and_fields(capsys):
    output.table(("NAME", "STATE"), [["demo-agent", "online"], ["x", None]])
    output.table(("NAME",), [])
    output.fields([("name", "a"), ("spiffe id", "b")])
    assert capsys.readouterr().out.splitlines() == [
        "NAME        STATE", "demo-agent  online", "x", "(none)", "name:      a", "spiffe id: b",
    ]  # fmt: skip


def test_enum_helpers_and_json():
    assert output.enum_short(common_pb2.AgentState, common_pb2.AGENT_STATE_ONLINE) == "online"
    assert output.enum_short(common_pb2.AgentState, 0) == ""
    assert output.enum_value(common_pb2.AgentType, "realtime-risk") == common_pb2.AGENT_TYPE_REALTIME_RISK
    with pytest.raises(ValueError, match="rag, multimodal"):
        output.enum_value(common_pb2.AgentType, "robot")
    data = json.loads(output.to_json(pb.AddPolicyResponse(added=False)))
    assert data == {"added": False}  # defaults are printed, not dropped
    agent = json.loads(output.to_json(pb.Agent(name="a", state=common_pb2.AGENT_STATE_ONLINE)))
    assert agent["state"] == "AGENT_STATE_ONLINE" and agent["spiffe_id"] == ""


class _PagedStub:
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def ListAgents(self, request, metadata=(), timeout=None):
        self.tokens.append(request.page.page_token)
        pages = {"": (["a", "b"], "p2"), "p2": (["c"], "p3"), "p3": ([], "")}
        names, nxt = pages[request.page.page_token]
        resp = pb.ListAgentsResponse(agents=[pb.Agent(name=n) for n in names])
        resp.page.next_page_token = nxt
        return resp


def test_list_all_follows_pages(capsys):
    stub = _PagedStub()
    ctx = Ctx(Connection(address="x"), json=True, _stub=stub)
    resp = ctx.list_all("ListAgents", pb.ListAgentsRequest(project="p"), "agents")
    assert [a.name for a in resp.agents] == ["a", "b", "c"] and stub.tokens == ["", "p2", "p3"]
    assert not resp.HasField("page")
    assert ctx.emit(resp, lambda r: None) == 0
    assert [a["name"] for a in json.loads(capsys.readouterr().out)["agents"]] == ["a", "b", "c"]
