"""The engine client's proxy from the environment, as httpx's trust_env read it: the scheme's
proxy (else ALL_PROXY) unless NO_PROXY covers the host, read once per endpoint. The proxy here is
a local server that answers the request itself, so what it saw is what a proxy would forward."""

from __future__ import annotations

import json

import pytest
from yarl import URL

from services.common.errors import Unavailable
from services.common.http_env import env_proxy
from services.router.engine import EngineRequest
from services.router.openai_engine import OpenAIEngine
from tests.helpers.http_replay import ReplayServer, Reply

REQ = EngineRequest(model="m", prompt="p", max_tokens=2)
DONE = b'data: {"choices": [{"text": "ok", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'


async def test_an_endpoint_is_reached_through_the_environments_proxy(no_env_proxy):
    async with ReplayServer(lambda _seen: Reply(pieces=[DONE])) as proxy:
        no_env_proxy.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://u:s3cret@"))
        engine = OpenAIEngine()
        try:
            texts = [c.text async for c in engine.stream("http://engine.invalid:8000", REQ, 10)]
        finally:
            await engine.close()
    assert texts == ["ok", ""]
    (seen,) = proxy.seen
    assert seen.headers["host"] == "engine.invalid:8000" and seen.url.endswith("/v1/completions")
    assert seen.headers["proxy-authorization"] == "Basic dTpzM2NyZXQ="  # u:s3cret, from the URL
    assert json.loads(seen.body)["model"] == "m"


async def test_no_proxy_and_other_schemes_go_direct(no_env_proxy):
    no_env_proxy.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    no_env_proxy.setenv("NO_PROXY", "engine.invalid")
    assert env_proxy(URL("http://engine.invalid:8000")) is None
    assert env_proxy(URL("https://other.example:8000")) is None  # only HTTP_PROXY is set
    assert env_proxy(URL("http://other.example:8000")) == URL("http://127.0.0.1:1")
    no_env_proxy.setenv("ALL_PROXY", "http://127.0.0.1:2")
    assert env_proxy(URL("https://other.example:8000")) == URL("http://127.0.0.1:2")
    engine = OpenAIEngine()
    with pytest.raises(Unavailable, match="failed: ConnectError"):  # direct: the name does not resolve
        async for _ in engine.stream("http://engine.invalid:8000", REQ, 10):
            pass
    await engine.close()
