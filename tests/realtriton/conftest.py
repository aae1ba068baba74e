"""`backend`: each conformance test runs on the engine simulator and on a real tritonserver.
`own_backend`: the same, but the real tritonserver is the test's own (for tests that unload)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from services.enginesim.testing import start_enginesim, write_catalog
from tests.conftest import _missing
from tests.realtriton.conformance import DECOUPLED_MODEL, PLAIN_MODEL, SPARE_MODEL, Backend


@contextlib.asynccontextmanager
async def _simulator(tmp_path) -> AsyncIterator[Backend]:
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


@pytest.fixture(params=["simulator", "real"])
async def backend(request, tmp_path):
    if request.param == "real":
        real = request.getfixturevalue("real_triton")
        yield Backend("real", real.address, real.metrics_url)
        return
    async with _simulator(tmp_path) as sim:
        yield sim


@pytest.fixture(params=["simulator", "real"])
async def own_backend(request, tmp_path):
    """Like `backend`, but "real" is a tritonserver of the test's own, not the session's: under
    load PyTriton's unload can hang for good (the model stays UNLOADING even through the
    server's own shutdown), and a model stuck UNLOADING leaves the server not ready, which
    would fail every later test on the shared server."""
    if request.param == "simulator":
        async with _simulator(tmp_path) as sim:
            yield sim
        return
    from tests.helpers.realtriton import RealTritonUnavailable, start_real_triton

    try:
        real = start_real_triton()
    except RealTritonUnavailable as exc:
        _missing(f"a real tritonserver ({exc})")
    try:
        yield Backend("real", real.address, real.metrics_url)
    finally:
        real.stop()


@pytest.fixture
async def stub(backend):
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pbg

    async with grpc.aio.insecure_channel(backend.address) as channel:
        yield pbg.GRPCInferenceServiceStub(channel)
