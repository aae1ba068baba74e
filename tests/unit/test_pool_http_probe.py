"""The pool's probe of an OpenAI-protocol engine over HTTP, against a real local server: every
round reuses its keep-alive connections (a scrape per interval must not dial per scrape), the API
calls carry the endpoint's headers and the metrics scrape none, answers are bounded, a redirect is
"not ready", and the environment's proxy is used."""

from __future__ import annotations

import json

import services.pool.probe as probe_mod
from services.pool.access import EngineAccess
from services.pool.endpoints import EndpointTable
from services.pool.probe import EngineReach, Prober, ProbeSettings
from services.pool.state import EndpointSpec
from tests.helpers.http_replay import ReplayServer, Reply, Seen

MODELS = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
METRICS = b'vllm:num_requests_running{model_name="m"} 2\nvllm:num_requests_waiting{model_name="m"} 3\n'
PLAIN = {"content-type": "text/plain"}


def engine(seen: Seen) -> Reply:
    if seen.url.endswith("/health"):
        return Reply(pieces=[b""], headers=PLAIN)
    if seen.url.endswith("/v1/models"):
        return Reply(pieces=[MODELS], headers={"content-type": "application/json"})
    if seen.url.endswith("/metrics"):
        return Reply(pieces=[METRICS], headers=PLAIN)
    return Reply(status=404, pieces=[b""], headers=PLAIN)


def prober(url: str, headers: tuple[tuple[str, str], ...] = ()) -> Prober:
    spec = EndpointSpec.make("v", url, metrics_url=f"{url}/metrics", kind="openai", flavour="vllm")
    reach = EngineReach(access=lambda _address: EngineAccess(headers=headers))
    return Prober(spec, EndpointTable(), ProbeSettings(), reach=reach)


async def probe_rounds(url: str, rounds: int = 1, headers: tuple[tuple[str, str], ...] = ()) -> list:
    """`rounds` probe rounds of one prober (its sessions kept between them), then closed."""
    p = prober(url, headers)
    try:
        return [await p.probe_once() for _ in range(rounds)]
    finally:
        await p._close()


async def test_rounds_reuse_their_connections_and_only_the_api_carries_the_headers(no_env_proxy):
    async with ReplayServer(engine) as server:
        results = await probe_rounds(server.url, 5, (("authorization", "Bearer k"),))
    assert all(r.ok for r in results) and [e.name for e in results[-1].models] == ["m"]
    load = results[-1].metrics.load_for("m", "")
    assert (load.active, load.waiting) == (2, 3)
    api = [s for s in server.seen if not s.url.endswith("/metrics")]
    scrapes = [s for s in server.seen if s.url.endswith("/metrics")]
    assert len(api) == 10 and len(scrapes) == 5
    # One keep-alive connection for the API and one for the metrics, however many rounds.
    assert len({s.peer_port for s in api}) == 1 and len({s.peer_port for s in scrapes}) == 1
    assert all(s.headers.get("authorization") == "Bearer k" for s in api)
    assert all("authorization" not in s.headers for s in scrapes)  # the metrics URL may be another host


async def test_answers_over_their_bounds_are_refused(no_env_proxy, monkeypatch):
    monkeypatch.setattr(probe_mod, "MAX_METRICS_BYTES", 16)
    monkeypatch.setattr("services.pool.openai_probe.MAX_MODELS_BYTES", 16)
    async with ReplayServer(engine) as server:
        [result] = await probe_rounds(server.url)
    assert not result.ok and result.error == "GET /v1/models: answer over 16 bytes"
    assert result.metrics is None  # a page over the bound is "no figures"


async def test_a_redirect_is_not_ready_and_a_failed_scrape_is_no_figures(no_env_proxy):
    def moved(seen: Seen) -> Reply:
        if seen.url.endswith("/health"):
            return Reply(status=307, pieces=[b""], headers={**PLAIN, "location": "/elsewhere"})
        return Reply(status=500, pieces=[b""], headers=PLAIN)

    async with ReplayServer(moved) as server:
        [result] = await probe_rounds(server.url)
    assert not result.ok and result.error == "GET /health: HTTP 307"
    assert result.metrics is None
    assert not any(s.url.endswith("/elsewhere") for s in server.seen)


async def test_a_refused_connection_is_not_ready_with_what_failed(no_env_proxy):
    async with ReplayServer(engine) as server:
        url = server.url
    p = prober(url)  # the server is gone: nothing listens there now
    try:
        result = await p.probe_once()
    finally:
        await p._close()
    assert not result.ok and "Connect" in result.error and result.metrics is None


async def test_the_environments_proxy_is_used(no_env_proxy):
    async with ReplayServer(engine) as proxy:
        no_env_proxy.setenv("HTTP_PROXY", proxy.url)
        p = prober("http://engine.invalid:8000")
        try:
            result = await p.probe_once()
        finally:
            await p._close()
    assert result.ok and result.metrics is not None
    assert {s.headers["host"] for s in proxy.seen} == {"engine.invalid:8000"}
