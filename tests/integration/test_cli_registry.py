"""The `harness` CLI against a real registry on port 0: it reads <root>/env, authenticates, and
prints tables, JSON, or the gRPC status of a failure (exit 1, no traceback)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.cli.main import main
from services.common.config import TlsFiles
from services.devtools.certs import make_certs
from services.registry.store import Store
from tests.helpers.registry_server import start_registry


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self):
        assert self.rc == 0, self.err
        return json.loads(self.out)


def _write_env(root: Path, **values: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "env").write_text("".join(f"export {k}='{v}'\n" for k, v in values.items()))


@pytest.fixture
async def registry(test_auth, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'registry.db'}")
    running = await start_registry(store, test_auth)
    yield running
    await running.stop(0)
    store.close()


@pytest.fixture
def root(tmp_path, registry, mint_token) -> Path:
    """A `.harness`-like directory: env naming the (plaintext) registry, and user tokens."""
    root = tmp_path / "harness"
    _write_env(root, HARNESS_ADDR=registry.address, HARNESS_PLAINTEXT="1")
    (root / "tokens").mkdir()
    (root / "tokens" / "alice.jwt").write_text(mint_token("alice", "admin"))
    (root / "tokens" / "bob.jwt").write_text(mint_token("bob"))
    return root


@pytest.fixture
def cli(root, capsys, monkeypatch):
    """Runs main() in a thread (the server shares this event loop); acts as alice unless told."""
    for name in ("HARNESS_ADDR", "HARNESS_REGISTRY_ADDR", "HARNESS_TOKEN", "HARNESS_API_KEY", "HARNESS_CA"):
        monkeypatch.delenv(name, raising=False)

    async def run(*argv: str, user: str | None = "alice") -> Result:
        args = [*argv, "--root", str(root)]
        if user:
            args += ["--user", user]
        capsys.readouterr()
        rc = await asyncio.to_thread(main, args)
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return Result(rc, out, err)

    return run


async def _seed(cli) -> None:
    for argv in (
        ("teams", "create", "finance"),
        ("projects", "create", "ledger", "--team", "finance"),
        ("users", "create", "bob", "--team", "finance", "--email", "bob@example.com"),
        ("models", "register", "llama-3-8b", "--triton-model", "llama-3-8b-instruct", "--parameters-b", "8",
         "--family", "llama-3", "--quantization", "fp16", "--context-length", "8192"),
        ("agents", "create", "demo-agent", "--project", "ledger", "--type", "rag", "--slo-class",
         "interactive", "--ttft-ms", "500", "--pii", "phone=hash"),
        ("versions", "create", "demo-agent", "v1", "--model", "llama-3-8b", "--meta", "git=abc", "--meta", "n=3"),
        ("versions", "create", "demo-agent", "v2", "--model", "llama-3-8b"),
    ):  # fmt: skip
        res = await cli(*argv)
        assert res.rc == 0, (argv, res.err)


async def test_agent_lifecycle_and_illegal_transition(cli):
    await _seed(cli)
    got = (await cli("agents", "get", "demo-agent", "--json")).json()["agent"]
    assert got["state"] == "AGENT_STATE_REGISTERED" and got["type"] == "AGENT_TYPE_RAG"
    assert got["slo"]["ttft_ms"] == 500 and got["data_policy"]["pii"][0]["mode"] == "MASK_MODE_HASH"
    assert [v["version"] for v in got["versions"]] == ["v1", "v2"]
    assert got["versions"][0]["metadata"] == {"git": "abc", "n": 3}

    res = await cli("agents", "state", "demo-agent", "online")
    assert res.rc == 0 and res.out.strip() == "demo-agent: online"
    res = await cli("agents", "state", "demo-agent", "retired")
    assert res.rc == 1 and res.out == ""
    assert res.err.startswith("harness: FAILED_PRECONDITION:") and "online" in res.err

    table = (await cli("agents", "list")).out.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "PROJECT", "STATE", "SLO", "VERSIONS", "TRAFFIC"]
    assert table[1].split() == ["demo-agent", "rag", "ledger", "online", "interactive", "v1,v2", "v1=100"]
    listed = (await cli("agents", "list", "--state", "offline", "--json")).json()
    assert listed.get("agents", []) == []
    listed = (await cli("agents", "list", "--state", "online", "--project", "ledger", "--json")).json()
    assert [a["name"] for a in listed["agents"]] == ["demo-agent"]

    for state in ("draining", "offline", "retired"):
        assert (await cli("agents", "state", "demo-agent", state)).rc == 0
    assert (await cli("agents", "get", "demo-agent", "--json")).json()["agent"][
        "state"
    ] == "AGENT_STATE_RETIRED"


async def test_bad_input_and_access_errors(cli):
    await _seed(cli)
    res = await cli("agents", "create", "demo-agent", "--project", "ledger")
    assert res.rc == 1 and "ALREADY_EXISTS" in res.err
    res = await cli("agents", "create", "other", "--project", "nope")
    assert res.rc == 1 and "NOT_FOUND" in res.err
    res = await cli("agents", "get", "ghost")
    assert res.rc == 1 and res.err.startswith("harness: NOT_FOUND:")
    res = await cli("agents", "create", "x", "--project", "ledger", user="bob")
    assert res.rc == 1 and "PERMISSION_DENIED" in res.err and "admin" in res.err
    res = await cli("agents", "list", user=None)
    assert res.rc == 1 and "UNAUTHENTICATED" in res.err
    assert (await cli("agents", "list", user="bob")).rc == 0  # reads: any authenticated user


async def test_traffic_split_and_rollback(cli):
    await _seed(cli)
    res = await cli("traffic", "set", "demo-agent", "v1=90", "v2=10")
    assert res.rc == 0 and res.out.strip() == "demo-agent: v1=90 v2=10"
    traffic = (await cli("agents", "get", "demo-agent", "--json")).json()["agent"]["traffic"]
    assert traffic == [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]
    res = await cli("traffic", "set", "demo-agent", "v1=50", "v2=10")
    assert res.rc == 1 and "INVALID_ARGUMENT" in res.err and "100" in res.err
    res = await cli("traffic", "set", "demo-agent", "v1=ninety")
    assert res.rc == 2 and "whole number" in res.err

    res = await cli("traffic", "rollback", "demo-agent")
    assert res.rc == 0 and res.out.strip() == "demo-agent: v1=100"
    res = await cli("traffic", "rollback", "demo-agent")
    assert res.rc == 1 and "FAILED_PRECONDITION" in res.err
    assert (await cli("traffic", "show", "demo-agent")).out.strip() == "demo-agent: v1=100"
    rows = (await cli("versions", "list", "demo-agent")).out.splitlines()
    assert [r.split()[:2] for r in rows[1:]] == [["v1", "100"], ["v2", "0"]]


async def test_api_key_create_use_and_revoke(cli):
    await _seed(cli)
    created = (await cli("keys", "create", "bob", "--project", "ledger", "--expires", "30d", "--json")).json()
    secret, key_id = created["secret"], created["key"]["id"]
    assert secret and key_id and created["key"]["user"] == "bob" and created["key"]["expire_time"]
    # The key works as a credential, and its secret is never listed.
    assert (await cli("agents", "list", "--api-key", secret, user=None)).rc == 0
    listing = await cli("keys", "list", "--owner", "bob")
    assert key_id in listing.out and "active" in listing.out and secret not in listing.out

    human = await cli("keys", "create", "bob", "--project", "ledger")
    assert human.rc == 0 and "secret: " in human.out and "shown only now" in human.err

    res = await cli("keys", "revoke", key_id)
    assert res.rc == 0 and res.out.startswith(f"revoked key {key_id}")
    keys = (await cli("keys", "list", "--json")).json()["keys"]
    assert {k["id"]: bool(k.get("revoke_time")) for k in keys}[key_id] is True
    res = await cli("agents", "list", "--api-key", secret, user=None)
    assert res.rc == 1 and "UNAUTHENTICATED" in res.err


async def test_policies_add_check_remove(cli):
    await _seed(cli)
    rule = ("p", "role:analyst", "ledger", "agent:demo-agent", "invoke")
    assert (await cli("policies", "add", *rule)).out.startswith("added: p, role:analyst")
    assert (await cli("policies", "add", *rule)).out.startswith("already present:")
    assert (await cli("policies", "add", "g", "bob", "role:analyst", "ledger")).rc == 0

    res = await cli("policies", "check", "bob", "ledger", "agent:demo-agent", "invoke")
    assert res.rc == 0 and res.out.startswith("allowed: user:bob ") and "role:analyst" in res.out
    res = await cli("policies", "add", "g", "team:finance", "role:analyst", "ledger")
    assert res.rc == 2 and "unknown kind" in res.err  # a bare name is a user; other kinds are refused
    check = (await cli("policies", "check", "bob", "ledger", "agent:demo-agent", "invoke", "--json")).json()
    assert check["allowed"] is True and "role:analyst" in check["rule"]
    res = await cli("policies", "check", "mallory", "ledger", "agent:demo-agent", "invoke", "--exit-code")
    assert res.rc == 3 and res.out.startswith("denied:") and "default deny" in res.out
    denied = (
        await cli("policies", "check", "mallory", "ledger", "agent:demo-agent", "invoke", "--json")
    ).json()
    assert denied["allowed"] is False

    rules = (await cli("policies", "list", "--domain", "ledger", "--json")).json()["rules"]
    assert {"ptype": "g", "values": ["user:bob", "role:analyst", "ledger"]} in rules
    res = await cli("policies", "add", "p", "role:analyst", "ledger", "agent:demo-agent", "fly")
    assert res.rc == 1 and "INVALID_ARGUMENT" in res.err
    res = await cli("policies", "add", "x", "a", "b", "c")
    assert res.rc == 2 and "p (policy) or g" in res.err

    assert (await cli("policies", "remove", *rule)).out.startswith("removed:")
    res = await cli("policies", "check", "bob", "ledger", "agent:demo-agent", "invoke")
    assert res.out.startswith("denied:")


async def test_catalog_and_tenancy_lists(cli):
    await _seed(cli)
    assert (await cli("teams", "list", "--json")).json()["teams"][0]["name"] == "finance"
    projects = (await cli("projects", "list", "--team", "finance")).out.splitlines()
    assert projects[1].split()[:2] == ["ledger", "finance"]
    users = (await cli("users", "list", "--json")).json()["users"]
    assert [u["name"] for u in users] == ["bob"]
    assert "bob@example.com" in (await cli("users", "get", "bob")).out
    register = (
        "models",
        "register",
        "minilm",
        "--kind",
        "embedding",
        "--dimensions",
        "384",
        "--context-length",
        "512",
    )
    assert (await cli(*register)).rc == 0
    models = (await cli("models", "list")).out.splitlines()
    assert models[1].split() == [
        "llama-3-8b",
        "llama-3-8b-instruct",
        "llama-3",
        "8B",
        "fp16",
        "0",
        "8192",
        "generation",
    ]
    assert models[2].split() == ["minilm", "minilm", "0B", "0", "512", "embedding", "384"]
    bad = await cli("models", "register", "m2", "--dimensions", "8")
    assert bad.rc != 0 and "dimensions are for embedding models" in bad.err
    assert (await cli("tools", "list")).out.strip() == "(none)"


async def test_user_rate_limits(cli):
    await _seed(cli)
    res = await cli("users", "create", "carol", "--rpm", "30")
    assert res.rc == 0, res.err
    table = res.out.splitlines()
    assert table[0].split()[:5] == ["NAME", "TEAM", "ROLES", "RPM", "TPM"]
    assert table[1].split()[:3] == ["carol", "30", "unlimited"]

    res = await cli("users", "limits", "bob", "--rpm", "60", "--tpm", "6000")
    assert res.rc == 0, res.err
    assert res.out.splitlines()[1].split()[:4] == ["bob", "finance", "60", "6000"]
    assert (await cli("users", "limits", "bob", "--tpm", "0")).rc == 0  # --rpm not given: kept
    got = (await cli("users", "get", "bob", "--json")).json()["user"]
    assert (int(got["rpm_limit"]), int(got["tpm_limit"])) == (60, 0)
    listed = (await cli("users", "list")).out.splitlines()
    assert listed[1].split()[:4] == ["bob", "finance", "60", "unlimited"]
    assert listed[2].split()[:3] == ["carol", "30", "unlimited"]

    res = await cli("users", "limits", "bob", "--rpm", "-1")
    assert res.rc == 1 and "INVALID_ARGUMENT" in res.err and "rpm_limit" in res.err
    res = await cli("users", "limits", "ghost", "--rpm", "1", "--tpm", "1")
    assert res.rc == 1 and "NOT_FOUND" in res.err and "ghost" in res.err
    res = await cli("users", "limits", "bob", "--rpm", "1", user="bob")
    assert res.rc == 1 and "PERMISSION_DENIED" in res.err
    res = await cli("users", "limits", "bob")
    assert res.rc == 2 and "--rpm and/or --tpm" in res.err


async def test_ops_cert_over_mtls_acts_as_admin(test_auth, tmp_path, capsys, monkeypatch):
    """`harness up` makes a `cli` service cert: direct to the registry it needs no admin token."""
    for name in ("HARNESS_ADDR", "HARNESS_TOKEN", "HARNESS_CERT", "HARNESS_KEY", "HARNESS_OPS_CERT"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "harness"
    certs = make_certs(root / "certs", services=("registry", "cli"), agents=("demo-agent",))
    leaf = certs.services["registry"]
    store = Store(f"sqlite:///{tmp_path / 'registry.db'}")
    running = await start_registry(
        store, test_auth, TlsFiles(str(leaf.cert), str(leaf.key), str(certs.ca_cert))
    )
    try:
        _write_env(
            root,
            HARNESS_ADDR="127.0.0.1:1",  # Envoy, not running: the direct registry address wins
            HARNESS_REGISTRY_ADDR=f"127.0.0.1:{running.port}",
            HARNESS_CA=str(certs.ca_cert),
            HARNESS_CERT=str(certs.agents["demo-agent"].cert),
            HARNESS_KEY=str(certs.agents["demo-agent"].key),
        )
        for argv in (
            ["teams", "create", "ops"],
            ["teams", "create", "other"],
            ["projects", "create", "tools", "--team", "ops"],
            ["agents", "create", "demo-agent", "--project", "tools"],
        ):
            rc = await asyncio.to_thread(main, [*argv, "--root", str(root)])
            assert rc == 0, capsys.readouterr().err
        capsys.readouterr()
        rc = await asyncio.to_thread(main, ["teams", "list", "--json", "--root", str(root)])
        teams = [t["name"] for t in json.loads(capsys.readouterr().out)["teams"]]
        assert rc == 0 and teams == ["ops", "other"]
        # The agent cert alone (no user token) may read its own project's records (its team's,
        # not the other), but not administer.
        demo = certs.agents["demo-agent"]
        agent = ["--cert", str(demo.cert), "--key", str(demo.key), "--root", str(root)]
        rc = await asyncio.to_thread(main, ["teams", "list", *agent])
        out = capsys.readouterr().out
        assert rc == 0 and "ops" in out and "other" not in out
        rc = await asyncio.to_thread(main, ["teams", "create", "x", *agent])
        assert rc == 1 and "PERMISSION_DENIED" in capsys.readouterr().err
    finally:
        await running.stop(0)
        store.close()


async def test_jwt_show_and_set_an_oidc_issuer(cli):
    res = await cli("jwt", "set", "--issuer", "https://idp.example/corp", "--audience", "harness",
                    "--oidc-discovery-url", "https://idp.example/corp/.well-known/openid-configuration")  # fmt: skip
    assert res.rc == 0 and "OIDC discovery https://idp.example/corp/.well-known" in res.out
    shown = (await cli("jwt", "show", "--json")).json()["settings"]
    assert shown["issuer"] == "https://idp.example/corp" and shown["oidc_discovery_url"].endswith(
        "configuration"
    )
    res = await cli("jwt", "set", "--issuer", "i", "--audience", "a", "--jwks-url", "http://idp.example/jwks")
    assert res.rc == 1 and "INVALID_ARGUMENT" in res.err and "https://" in res.err
    res = await cli("jwt", "set", "--issuer", "i", "--audience", "a", "--jwks-url", "https://x/j",
                    "--oidc-discovery-url", "https://x/d")  # fmt: skip
    assert res.rc == 2 and "exactly one" in res.err
