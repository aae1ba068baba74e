"""The pool follows the registry's Watch: an agent going online has its models loaded before its
first request, going offline releases them, and the deployable models are the registry's."""

from __future__ import annotations

from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb
from harness.registry.v1.registry_pb2_grpc import RegistryStub

from services.common.config import ServerConfig, TlsFiles
from services.common.server import open_channel
from services.devtools.certs import make_certs
from services.enginesim.testing import start_enginesim
from services.pool.app import serve
from services.pool.config import PoolConfig
from services.pool.state import EndpointSpec
from services.registry.seed import seed_registry
from tests.helpers.polling import until
from tests.integration.test_registry_server import DEMO
from tests.integration.test_router_registry_mirror import Registry

TRITON_MODEL = "llama-3-8b-instruct"  # DEMO's llama-3-8b


async def test_agent_lifecycle_drives_model_loads(tmp_path, test_auth):
    certs = make_certs(tmp_path / "certs", services=("registry", "pool"), agents=())

    def tls(name: str) -> TlsFiles:
        pair = certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", test_auth, tls("registry"))
    await registry.start()
    sim = await start_enginesim(time_scale=1000, preload=False)  # nothing loaded
    cfg = PoolConfig(
        endpoints=(EndpointSpec.make("sim-0", sim.address, metrics_url=sim.metrics_url, gpu_count=1),),
        nvml=False,
        probe_interval_s=0.1,
        idle_check_interval_s=0.1,
        agent_idle_ttl_s=0.0,
        registry_addr=f"127.0.0.1:{registry.port}",
    )
    pool_server = ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth, tls=tls("pool"))
    running, app = await serve(cfg, pool_server)
    channel = open_channel(f"127.0.0.1:{registry.port}", tls("pool"))
    stub = RegistryStub(channel)
    engine = sim.server.sim
    try:
        await seed_registry(stub, DEMO, ())  # demo-agent is created online, pinning llama-3-8b
        await until(lambda: engine.is_ready(TRITON_MODEL))
        # The model table came from the registry's catalog (memory_gib), not from pool config.
        assert app.catalog.get("llama-3-8b").memory_bytes == 16 * 1024**3

        for state in (common_pb2.AGENT_STATE_DRAINING, common_pb2.AGENT_STATE_OFFLINE):
            await stub.SetAgentState(pb.SetAgentStateRequest(agent="demo-agent", state=state))
        await until(lambda: not engine.is_ready(TRITON_MODEL))  # its only claim was released

        await stub.SetAgentState(
            pb.SetAgentStateRequest(agent="demo-agent", state=common_pb2.AGENT_STATE_ONLINE)
        )
        await until(lambda: engine.is_ready(TRITON_MODEL))  # warmed again, before any request
        assert sum(e.stats.success for e in engine.engines().values()) == 0
    finally:
        await channel.close()
        await running.stop(grace=0)
        await sim.stop()
        await registry.stop()
