"""The CLI with the env file `harness up` writes: through a real Envoy front door (mTLS with the
agent cert, XFCC to the registry) and the demo admin's JWT."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.cli.main import main
from services.common.config import ServerConfig, TlsFiles
from services.common.identity import AuthConfig, mint_jwt
from services.common.server import start_server
from services.devtools.certs import make_certs
from services.envoy.render import EnvoyCerts, EnvoySpec, write_envoy_config
from services.registry.policy import Policy
from services.registry.servicer import RegistryServicer
from services.registry.store import Store
from tests.helpers.envoy import start_envoy

TD = "harness.local"


@pytest.fixture
async def front_door(tmp_path, monkeypatch):
    """(root dir with an up.py-style env file, registry port) behind a running Envoy."""
    for name in ("HARNESS_ADDR", "HARNESS_REGISTRY_ADDR", "HARNESS_TOKEN", "HARNESS_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "harness"
    certs = make_certs(root / "certs", services=("registry", "cli"), agents=("demo-agent",))
    auth = AuthConfig(
        trust_domain=TD,
        trusted_proxies=(f"spiffe://{TD}/envoy",),
        jwt_public_key_path=str(certs.jwt_public_key),
    )
    leaf = certs.services["registry"]
    store = Store(f"sqlite:///{tmp_path / 'registry.db'}")
    servicer = RegistryServicer(store, Policy(store), TD)
    cfg = ServerConfig(
        name="registry", port=0, metrics_port=None, auth=auth,
        tls=TlsFiles(str(leaf.cert), str(leaf.key), str(certs.ca_cert)),
    )  # fmt: skip
    running = await start_server(cfg, servicer.register, api_key_resolver=servicer.resolve_api_key)
    spec = EnvoySpec(
        listen_host="127.0.0.1",
        listen_port=0,
        admin_port=0,
        certs=EnvoyCerts(ca=certs.ca_cert, cert=certs.envoy.cert, key=certs.envoy.key),
        upstreams={"registry": [("127.0.0.1", running.port)]},
        routes=(("/harness.registry.v1.Registry/", "registry"),),
        trust_domain=TD,
    )
    envoy = start_envoy(write_envoy_config(spec, tmp_path / "envoy.yaml"))
    try:
        await envoy.wait_ready_async(timeout=30, clusters=["registry"])
        private = certs.jwt_private_key.read_bytes()
        (root / "tokens").mkdir()
        (root / "tokens" / "bob.jwt").write_text(mint_jwt(private, "bob"))
        agent = certs.agents["demo-agent"]
        env = {  # what services/stack/up.py writes
            "HARNESS_ADDR": f"localhost:{envoy.listener_port()}",
            "HARNESS_CA": str(certs.ca_cert),
            "HARNESS_CERT": str(agent.cert),
            "HARNESS_KEY": str(agent.key),
            "HARNESS_AGENT": "demo-agent",
            "HARNESS_TOKEN": mint_jwt(private, "alice", roles=("admin",)),
        }
        (root / "env").write_text("".join(f"export {k}='{v}'\n" for k, v in env.items()))
        yield root, running.port
    finally:
        envoy.stop()
        await running.stop(0)
        store.close()


async def test_cli_through_envoy_with_the_up_env_file(front_door, capsys):
    root, registry_port = front_door

    async def cli(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = await asyncio.to_thread(main, [*argv, "--root", str(root)])
        out, err = capsys.readouterr()
        return rc, out, err

    for argv in (
        ("teams", "create", "finance"),
        ("projects", "create", "ledger", "--team", "finance"),
        ("models", "register", "m1"),
        ("agents", "create", "demo-agent", "--project", "ledger"),
        ("versions", "create", "demo-agent", "v1", "--model", "m1"),
        ("users", "create", "bob", "--team", "finance"),
    ):
        rc, _, err = await cli(*argv)
        assert rc == 0, (argv, err)
    rc, out, _ = await cli("agents", "get", "demo-agent", "--json")
    agent = json.loads(out)["agent"]
    assert agent["spiffe_id"] == f"spiffe://{TD}/agent/demo-agent" and agent["traffic"][0]["weight"] == 100
    # The registry's own status comes back through Envoy unchanged.
    rc, out, err = await cli("agents", "state", "demo-agent", "draining")
    assert rc == 1 and "FAILED_PRECONDITION" in err and "registered" in err
    # --user swaps the demo admin for bob: he may read (his team's projects), not write.
    rc, out, _ = await cli("teams", "list", "--user", "bob")
    assert rc == 0 and "finance" in out
    rc, _, err = await cli("teams", "create", "ops", "--user", "bob")
    assert rc == 1 and "PERMISSION_DENIED" in err
    # Straight to the registry with the ops cert `harness up` makes: admin even as bob.
    rc, _, err = await cli(
        "teams", "create", "ops", "--user", "bob", "--addr", f"127.0.0.1:{registry_port}",
        "--cert", str(root / "certs/services/cli.pem"), "--key", str(root / "certs/services/cli.key"),
    )  # fmt: skip
    assert rc == 0, err
