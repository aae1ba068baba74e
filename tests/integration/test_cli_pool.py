"""`harness endpoints|deployments|gpus` against a real pool server on port 0 whose endpoint is
a real tritonserver: the CLI finds the pool at HARNESS_POOL_ADDR, tables and JSON show live
load, and the request count follows traffic (Triton's typed counters, read right). Scale to
zero and `deployments activate` run against a pool over an engine simulator instead (its
loads take milliseconds, and unloading a model of the shared tritonserver would upset the
other tests)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc as pbg

from services.cli.main import main
from services.common.config import ServerConfig
from services.enginesim.testing import start_enginesim, write_catalog
from services.pool.app import serve
from services.pool.catalog import ModelSpec
from services.pool.config import PoolConfig
from services.pool.state import GIB, EndpointSpec
from tests.helpers.pool_server import sim_endpoints
from tests.realtriton.conformance import PLAIN_MODEL, eventually, infer_request


@dataclass
class Result:
    rc: int
    out: str
    err: str


@pytest.fixture
async def pool(test_auth, real_triton):
    spec = EndpointSpec.make("real", real_triton.address, metrics_url=real_triton.metrics_url)
    cfg = PoolConfig(
        endpoints=(spec,),
        nvml=False,
        probe_interval_s=0.2,
        models=(ModelSpec("awq", PLAIN_MODEL, 1 * GIB),),
    )
    running, _app = await serve(cfg, ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth))
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def sim_pool(test_auth, tmp_path):
    """A pool over one engine simulator whose catalog model 'small' is deployed by the test."""
    catalog = write_catalog(
        tmp_path / "models.yaml", [{"name": "small-trt", "memory_gb": 15, "load_time_s": 8, "preload": False}]
    )
    sim = await start_enginesim(catalog_path=catalog, gpu_memory_gb=80, time_scale=1000, preload=False)
    cfg = PoolConfig(
        endpoints=sim_endpoints([sim]),
        nvml=False,
        models=(ModelSpec("small", "small-trt", 15 * GIB),),
        headroom=0.0,
        probe_interval_s=0.1,
        idle_check_interval_s=0.1,
    )
    running, _app = await serve(cfg, ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth))
    yield running
    await running.stop(grace=0)
    await sim.stop()


@pytest.fixture
def cli(pool, tmp_path, capsys, monkeypatch, mint_token):
    return cli_for(pool.address, tmp_path, capsys, monkeypatch, mint_token)


@pytest.fixture
def sim_cli(sim_pool, tmp_path, capsys, monkeypatch, mint_token):
    return cli_for(sim_pool.address, tmp_path, capsys, monkeypatch, mint_token)


def cli_for(pool_address: str, tmp_path, capsys, monkeypatch, mint_token):
    """Runs `harness ...` as an operator against the pool at `pool_address`, capturing its output."""
    root = tmp_path / "harness"
    (root / "tokens").mkdir(parents=True)
    (root / "env").write_text(
        f"export HARNESS_POOL_ADDR='{pool_address}'\nexport HARNESS_REGISTRY_ADDR='127.0.0.1:1'\n"
        "export HARNESS_PLAINTEXT='1'\n"
    )
    (root / "tokens" / "ops.jwt").write_text(mint_token("ops", "operator"))
    for name in ("HARNESS_ADDR", "HARNESS_POOL_ADDR", "HARNESS_REGISTRY_ADDR", "HARNESS_TOKEN", "HARNESS_CA"):
        monkeypatch.delenv(name, raising=False)

    async def run(*argv: str) -> Result:
        capsys.readouterr()
        rc = await asyncio.to_thread(main, [*argv, "--root", str(root), "--user", "ops"])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return Result(rc, out, err)

    return run


def requests_of(out: str, endpoint: str, model: str) -> int:
    eps = json.loads(out)["endpoints"]
    ep = next(e for e in eps if e["name"] == endpoint)
    m = next(m for m in ep.get("models", []) if m["name"] == model)
    return int(m.get("requests", 0))


async def test_endpoints_list_shows_the_request_count_rising(cli, real_triton):
    async def listed() -> bool:
        res = await cli("endpoints", "list", "--format", "json")
        return res.rc == 0 and '"ENDPOINT_HEALTH_HEALTHY"' in res.out and PLAIN_MODEL in res.out

    await eventually(listed, 30)
    before = requests_of((await cli("endpoints", "list", "--format", "json")).out, "real", PLAIN_MODEL)
    async with grpc.aio.insecure_channel(real_triton.address) as ch:
        stub = pbg.GRPCInferenceServiceStub(ch)
        for _ in range(3):
            await stub.ModelInfer(infer_request(PLAIN_MODEL, "count", 2))

    async def rose() -> bool:
        out = (await cli("endpoints", "list", "--format", "json")).out
        return requests_of(out, "real", PLAIN_MODEL) >= before + 3

    await eventually(rose, 30)
    table = await cli("endpoints", "list")
    assert table.rc == 0 and "REQUESTS" in table.out and "real" in table.out and "healthy" in table.out


async def test_deployments_and_gpus(cli):
    await eventually(lambda: _ready(cli), 30)
    res = await cli("deployments", "deploy", "awq", "--idle-ttl", "600")
    assert res.rc == 0, res.err
    assert "deployed awq (1/1 ready) on real" in res.out  # already loaded there: no load needed
    listed = json.loads((await cli("deployments", "list", "--format", "json")).out)["deployments"]
    assert [(d["model"], d["triton_model"], d["ready_replicas"]) for d in listed] == [("awq", PLAIN_MODEL, 1)]
    table = await cli("deployments", "list")
    assert "awq" in table.out and "1/1" in table.out
    gpus = await cli("gpus", "--format", "json")
    assert gpus.rc == 0 and json.loads(gpus.out).get("gpus", []) == []  # a CPU Triton reports none
    table = await cli("gpus")
    assert table.rc == 0 and table.out.strip() == "(none)"  # no GPU figures: said, not an empty grid
    bad = await cli("deployments", "deploy", "nope")
    assert bad.rc == 1 and "NOT_FOUND" in bad.err
    woken = await cli("deployments", "activate", "awq")
    assert woken.rc == 0, woken.err
    assert woken.out.strip() == "awq is not scaled to zero (1/1 ready): nothing to wake"
    as_json = json.loads((await cli("deployments", "activate", "awq", "--format", "json")).out)
    assert as_json["waking"] is False and as_json["deployment"]["ready_replicas"] == 1
    unknown = await cli("deployments", "activate", "nope")
    assert unknown.rc == 1 and "NOT_FOUND" in unknown.err


async def _ready(cli) -> bool:
    res = await cli("endpoints", "list", "--format", "json")
    return res.rc == 0 and PLAIN_MODEL in res.out and "MODEL_STATE_READY" in res.out


async def test_activate_wakes_a_deployment_scaled_to_zero(sim_cli):
    async def healthy() -> bool:
        res = await sim_cli("endpoints", "list", "--format", "json")
        return res.rc == 0 and '"ENDPOINT_HEALTH_HEALTHY"' in res.out

    await eventually(healthy, 30)
    # Idle for 10 s, it goes to zero; woken, it stays ready at least that long: long enough for
    # this test's CLI processes (a second or more each on a loaded machine) to see it ready.
    res = await sim_cli("deployments", "deploy", "small", "--idle-ttl", "10")
    assert res.rc == 0 and "deployed small" in res.out, (res.out, res.err)

    def small(res: Result) -> dict:
        assert res.rc == 0, res.err
        return next(d for d in json.loads(res.out)["deployments"] if d["model"] == "small")

    async def at_zero() -> bool:  # idle for its TTL: the pool unloads it
        d = small(await sim_cli("deployments", "list", "--format", "json"))
        return d.get("scaled_to_zero", False) and d.get("ready_replicas", 0) == 0

    await eventually(at_zero, 60)
    woken = await sim_cli("deployments", "activate", "small")
    assert woken.rc == 0, woken.err
    assert woken.out.strip() == (
        "waking small: loading 1 replica(s); routers hold its requests until one is ready"
    )

    async def loaded() -> bool:  # for its idle TTL (10 s) at least, before it may go to zero again
        d = small(await sim_cli("deployments", "list", "--format", "json"))
        return not d.get("scaled_to_zero", False) and d.get("ready_replicas", 0) == 1

    await eventually(loaded, 60)
