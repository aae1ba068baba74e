"""`backend`: each conformance test runs on the engine simulator and on a real tritonserver."""

from __future__ import annotations

import pytest

from services.enginesim.testing import start_enginesim, write_catalog
from tests.realtriton.conformance import DECOUPLED_MODEL, PLAIN_MODEL, SPARE_MODEL, Backend


@pytest.fixture(params=["simulator", "real"])
async def backend(request, tmp_path):
    if request.param == "real":
        real = request.getfixturevalue("real_triton")
        yield Backend("real", real.address, real.metrics_url)
        return
    catalog = write_catalog(
        tmp_path / "models.yaml",
        [
            {"name": DECOUPLED_MODEL},
            {"name": PLAIN_MODEL, "decoupled": False, "layout": "bls"},
            {"name": SPARE_MODEL, "decoupled": False, "layout": "bls"},
        ],
    )
    sim = await start_enginesim(catalog_path=catalog, time_scale=1000)
    try:
        yield Backend("simulator", sim.address, sim.metrics_url)
    finally:
        await sim.stop()


@pytest.fixture
async def stub(backend):
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pbg

    async with grpc.aio.insecure_channel(backend.address) as channel:
        yield pbg.GRPCInferenceServiceStub(channel)
