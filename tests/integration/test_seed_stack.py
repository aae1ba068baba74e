"""`python -m services.devtools.seed_stack`, what the compose stack's seed service and the
Kubernetes dev overlay's seed Job run: against a real registry, audit and cost service over mTLS
(the ops certificate), the demo data, the JWT settings and one token per demo user, with the
exact command line of compose/docker-compose.yml (paths swapped); a rerun changes nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import jwt as pyjwt
import pytest
import yaml
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from harness.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.server import open_channel
from tests.helpers.scaleout import REPO, build_mesh, child_env, migrated_databases, start_all

pytestmark = pytest.mark.postgres

DEMO = REPO / "compose/demo.yaml"


def compose_seed_argv(mesh, tokens: Path) -> list[str]:
    """The compose file's seed command with this machine's addresses and certificate paths."""
    argv = yaml.safe_load((REPO / "compose/docker-compose.yml").read_text())["services"]["seed"]["command"]
    cli, certs = mesh.certs.services["cli"], mesh.certs
    swap = {
        "registry:50052": mesh.addr("registry"), "cost:50055": mesh.addr("cost-0"),
        "/app/compose/demo.yaml": str(DEMO), "/etc/harness/certs/services/cli.pem": str(cli.cert),
        "/etc/harness/certs/services/cli.key": str(cli.key), "/etc/harness/certs/ca.pem": str(certs.ca_cert),
        "/etc/harness/certs/jwt-signing.pub": str(certs.jwt_public_key),
        "/etc/harness/certs/jwt-signing.key": str(certs.jwt_private_key), "/var/lib/harness/tokens": str(tokens),
    }  # fmt: skip
    assert argv[:3] == ["python", "-m", "services.devtools.seed_stack"]
    return [sys.executable, *argv[1:3], *(swap.get(a, a) for a in argv[3:])]


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)


async def test_seed_as_compose_runs_it(tmp_path, new_postgres_db, redis_url):
    urls = migrated_databases(new_postgres_db)
    mesh = build_mesh(tmp_path / "mesh", urls, redis_url, "unused:", routers=0, audits=1, costs=1)
    try:
        await start_all(mesh)
        argv = compose_seed_argv(mesh, tmp_path / "tokens")
        first = await asyncio.to_thread(run, argv)
        assert first.returncode == 0, first.stdout + first.stderr
        demo = yaml.safe_load(DEMO.read_text())
        users = {u["name"]: u for u in demo["registry"]["users"]}
        assert {p.stem for p in (tmp_path / "tokens").glob("*.jwt")} == set(users)
        alice = pyjwt.decode(
            (tmp_path / "tokens/alice.jwt").read_text(), mesh.certs.jwt_public_key.read_bytes(),
            algorithms=["RS256"], audience="harness", issuer="harness",
        )  # fmt: skip
        assert alice["sub"] == "alice" and alice["roles"] == users["alice"]["roles"]
        ops = mesh.tls("cli")
        async with (
            open_channel(mesh.addr("registry"), ops) as reg,
            open_channel(mesh.addr("cost-0"), ops) as cost,
        ):
            registry = registry_pb2_grpc.RegistryStub(reg)
            for agent in demo["registry"]["agents"]:
                got = await registry.GetAgent(registry_pb2.GetAgentRequest(name=agent["name"]), timeout=10)
                assert got.agent.name == agent["name"]
            settings = await registry.GetJwtSettings(registry_pb2.GetJwtSettingsRequest(), timeout=10)
            assert settings.settings.public_key_pem == mesh.certs.jwt_public_key.read_text()
            prices = await cost_pb2_grpc.CostStub(cost).ListPrices(cost_pb2.ListPricesRequest(), timeout=10)
            assert len(prices.prices) >= len(demo["cost"]["prices"])
        again = await asyncio.to_thread(run, argv)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "created=0" in again.stdout, again.stdout  # a rerun finds everything in place
    finally:
        mesh.stop()
