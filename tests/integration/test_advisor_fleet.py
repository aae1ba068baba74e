"""Advise over the live fleet: real registry and pool servers (mTLS, port 0) over five engine
simulators, the cost server reading them with its own certificate through LiveFleet, a month of
ledger usage where five agents run llama-3-8b on five deployments; then the registry and the
pool go away and the notes say so. `harness cost advise` runs against the same servers."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import grpc
import pytest
import yaml
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from harness.pool.v1 import pool_pb2, pool_pb2_grpc
from harness.registry.v1 import registry_pb2 as rpb
from harness.registry.v1.registry_pb2_grpc import RegistryStub

from services.cli.main import main
from services.common.config import ServerConfig, TlsFiles
from services.common.server import open_channel
from services.cost.advisor.base import GIB, HOURS_PER_MONTH
from services.cost.fleet_source import LiveFleet
from services.devtools.certs import make_certs
from services.enginesim.testing import start_enginesim
from services.pool.app import serve
from services.pool.catalog import ModelSpec
from services.pool.config import PoolConfig
from services.registry.seed import seed_registry
from tests.helpers.cost import start_test_cost
from tests.helpers.grpc import user_metadata
from tests.helpers.pool_server import sim_endpoints
from tests.integration.test_advisor_server import GPU, PRICES, month_of_usage
from tests.integration.test_router_registry_mirror import Registry

CATALOG = yaml.safe_load("""
registry:
  teams: [{name: finance}]
  projects: [{name: ledger, team: finance}]
  models:
    - {name: llama-3-8b, triton_model: llama-3-8b-instruct, family: llama-3, parameters_b: 8,
       quantization: fp16, memory_gib: 33, context_length: 8192}
    - {name: llama-3-8b-awq, triton_model: llama-3-8b-instruct-awq, family: llama-3, parameters_b: 8,
       quantization: awq-int4, memory_gib: 15, context_length: 8192}
""")
PER_DEPLOYMENT = 33 / 80 * HOURS_PER_MONTH * 2_500_000  # 33 GiB of an 80 GiB H100 at $2.50/GPU-hour


@dataclass
class Live:
    cost: cost_pb2_grpc.CostStub
    cost_addr: str
    registry: Registry
    pool: object  # RunningServer
    fleet: LiveFleet
    finance: tuple


async def _until(fetch, predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate(value := await fetch()):
        assert time.monotonic() < deadline, f"condition not met; last value: {value}"
        await asyncio.sleep(0.05)
    return value


async def _seed_agents(stub: RegistryStub) -> None:
    """agent-0..4 on llama-3-8b; agent-0's version defaults max_tokens to 1024."""
    for i in range(5):
        agent = rpb.Agent(name=f"agent-{i}", project="ledger", type=common_pb2.AGENT_TYPE_RAG)
        await stub.CreateAgent(rpb.CreateAgentRequest(agent=agent))
        version = rpb.AgentVersion(version="v1", models=["llama-3-8b"])
        version.default_sampling.max_tokens = 1024 if i == 0 else 0
        await stub.CreateAgentVersion(rpb.CreateAgentVersionRequest(agent=f"agent-{i}", version=version))


@pytest.fixture
async def live(tmp_path, test_auth, mint_token):
    certs = make_certs(tmp_path / "certs", services=("registry", "pool", "cost", "cli"), agents=())

    def tls(name: str) -> TlsFiles:
        pair = certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", test_auth, tls("registry"))
    await registry.start()
    sims = [await start_enginesim(time_scale=1000, preload=False) for _ in range(5)]  # 80 GiB GPU each
    endpoints = sim_endpoints(sims, GPU)
    cfg = PoolConfig(
        endpoints=endpoints, nvml=False, models=(ModelSpec("llama-3-8b", "llama-3-8b-instruct", 33 * GIB),),
        headroom=0.0, probe_interval_s=0.1, idle_check_interval_s=0.1, agent_idle_ttl_s=0.0,
    )  # fmt: skip
    pool, _app = await serve(
        cfg, ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth, tls=tls("pool"))
    )
    ops = {name: open_channel(f"127.0.0.1:{port}", tls("cli")) for name, port in
           (("registry", registry.port), ("pool", pool.port))}  # fmt: skip
    await seed_registry(RegistryStub(ops["registry"]), CATALOG, ())
    await _seed_agents(RegistryStub(ops["registry"]))
    # One pool deployment of llama-3-8b with a replica on each simulator: five `llama-3-8b@sim-i`.
    pstub = pool_pb2_grpc.PoolStub(ops["pool"])
    healthy = pool_pb2.ENDPOINT_HEALTH_HEALTHY
    await _until(lambda: pstub.ListEndpoints(pool_pb2.ListEndpointsRequest()),
                 lambda r: sum(e.health == healthy for e in r.endpoints) == 5)  # fmt: skip
    await pstub.Deploy(pool_pb2.DeployRequest(model="llama-3-8b", replicas=5, owner="team:finance"))
    await _until(lambda: pstub.ListDeployments(pool_pb2.ListDeploymentsRequest()),
                 lambda r: [d.ready_replicas for d in r.deployments] == [5])  # fmt: skip
    await _until(lambda: pstub.ListGpus(pool_pb2.ListGpusRequest()), lambda r: len(r.gpus) == 5)

    fleet = LiveFleet(f"127.0.0.1:{pool.port}", f"127.0.0.1:{registry.port}", tls("cost"), ttl_s=0.0)
    cost = await start_test_cost(tmp_path, test_auth, fleet=fleet)
    channel = grpc.aio.insecure_channel(cost.address)
    stub = cost_pb2_grpc.CostStub(channel)
    admin = user_metadata(mint_token("ops", "admin"))
    for kind, subject, micro in PRICES:
        price = cost_pb2.Price(kind=kind, subject=subject, micro_usd=micro)
        price.effective_time.FromSeconds(int(time.time()) - 60 * 86_400)
        await stub.SetPrice(cost_pb2.SetPriceRequest(price=price), metadata=admin)

    month = cost_pb2.RecordRequest(events=month_of_usage())
    assert (await stub.Record(month, metadata=admin)).accepted == 600
    yield Live(stub, cost.address, registry, pool, fleet, user_metadata(mint_token("fin", "finance")))
    await channel.close()
    await cost.stop(grace=0)
    await fleet.close()
    for ch in ops.values():
        await ch.close()
    await pool.stop(grace=0)  # a second stop of a stopped server is harmless
    for s in sims:
        await s.stop()
    if registry.running is not None:
        await registry.stop()


async def test_advise_consolidates_with_vram_and_dollars_from_the_live_fleet(live):
    resp = await live.cost.Advise(cost_pb2.AdviseRequest(), metadata=live.finance)
    assert list(resp.notes) == []  # pool and registry both answered
    top = resp.recommendations[0]
    assert (top.rule, top.title) == ("consolidate", "Consolidate 5 agents on one llama-3-8b deployment")
    # The pool's 33 GiB per replica on each simulator's 80 GiB GPU (ListGpus), the endpoint's GPU type.
    assert top.vram_saved_bytes == 4 * 33 * GIB
    assert top.monthly_saving_micro_usd == round(4 * PER_DEPLOYMENT)
    assert "remove llama-3-8b@sim-1, llama-3-8b@sim-2, llama-3-8b@sim-3, llama-3-8b@sim-4" in top.action
    assert (
        "llama-3-8b@sim-1: 33.0 GiB = 0.41 GPU x 730 h x $2.50/GPU-h (H100-80GB) = $753.33/month"
        in top.evidence
    )
    by_rule = {r.rule: r for r in resp.recommendations}
    # The registry's catalog has the AWQ variant: 18 GiB less on each of the five replicas.
    assert by_rule["quantize"].title == "Move llama-3-8b to llama-3-8b-awq"
    assert by_rule["quantize"].vram_saved_bytes == 5 * 18 * GIB
    # agent-0's version reserves 1024 tokens for answers of 200: the registry's figure, not 256.
    assert by_rule["cut_max_tokens"].title == "Cut agent-0's max_tokens from 1024 to 400"
    assert "scale_to_zero" not in by_rule  # every deployment served every day


async def test_advise_names_the_unreachable_service(live):
    registry_addr = f"127.0.0.1:{live.registry.port}"
    await live.registry.stop()
    live.registry.running = None
    resp = await live.cost.Advise(cost_pb2.AdviseRequest(), metadata=live.finance)
    assert resp.notes[0].startswith(
        f"fleet: the registry at {registry_addr} did not answer ListModels (UNAVAILABLE"
    )
    assert (
        "quantize: no model catalog (no registry configured or reachable): quantized variants unknown"
        in resp.notes
    )
    top = resp.recommendations[0]  # the pool alone still prices the consolidation
    assert top.rule == "consolidate" and top.monthly_saving_micro_usd == round(4 * PER_DEPLOYMENT)

    pool_addr = f"127.0.0.1:{live.pool.port}"
    await live.pool.stop(grace=0)
    resp = await live.cost.Advise(cost_pb2.AdviseRequest(rules=["consolidate"]), metadata=live.finance)
    assert resp.notes[0].startswith(
        f"fleet: the pool at {pool_addr} did not answer ListDeployments (UNAVAILABLE"
    )
    assert resp.notes[0].endswith(": no fleet snapshot")
    assert resp.notes[1].startswith(f"fleet: the registry at {registry_addr} did not answer ListModels")
    assert resp.notes[2].startswith("consolidate: no fleet snapshot (no pool configured or reachable)")
    (rec,) = resp.recommendations  # from the ledger alone: no VRAM, no dollars
    assert rec.monthly_saving_micro_usd == 0 and "GPU-hour cost unknown" in rec.evidence


async def test_cli_cost_advise(live, tmp_path, capsys, monkeypatch, mint_token):
    root = tmp_path / "harness"
    (root / "tokens").mkdir(parents=True)
    (root / "env").write_text(f"export HARNESS_COST_ADDR='{live.cost_addr}'\nexport HARNESS_PLAINTEXT='1'\n")
    (root / "tokens" / "fiona.jwt").write_text(mint_token("fiona", "finance"))
    (root / "tokens" / "dave.jwt").write_text(mint_token("dave", "analyst"))
    for name in ("HARNESS_ADDR", "HARNESS_COST_ADDR", "HARNESS_TOKEN", "HARNESS_CA"):
        monkeypatch.delenv(name, raising=False)

    async def cli(*argv: str, user: str = "fiona") -> tuple[int, str, str]:
        capsys.readouterr()
        rc = await asyncio.to_thread(main, ["cost", "advise", *argv, "--root", str(root), "--user", user])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return rc, out, err

    rc, out, err = await cli()
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["#", "RULE", "SAVING_USD_MONTH", "VRAM_GIB", "TITLE"]
    assert lines[1].split()[:4] == ["1", "consolidate", f"{round(4 * PER_DEPLOYMENT) / 1e6:.2f}", "132.0"]
    assert "1. Consolidate 5 agents on one llama-3-8b deployment" in lines
    assert "vram freed: 132.0 GiB" in out and "action:" in out and "evidence:" in out
    assert "notes:" not in out

    rc, out, err = await cli("--rule", "quantize,cut_max_tokens", "--project", "ledger", "--format", "json")
    assert rc == 0, err
    data = json.loads(out)
    assert [r["rule"] for r in data["recommendations"]] == ["quantize", "cut_max_tokens"]
    assert data["recommendations"][0]["vram_saved_gib"] == 90.0 and data["notes"] == []

    await live.pool.stop(grace=0)
    rc, out, err = await cli("--rule", "scale_to_zero", "--period-days", "7", "--json")
    assert rc == 0, err
    assert json.loads(out)["notes"][0].startswith("fleet: the pool at ")

    rc, _, err = await cli(user="dave")
    assert rc == 1 and err.startswith("harness: PERMISSION_DENIED: ")
    rc, _, err = await cli("--rule", "nope")
    assert rc == 1 and "INVALID_ARGUMENT" in err and "nope" in err
    rc, _, err = await cli("--period-days", "400")
    assert rc == 2 and "--period-days" in err
