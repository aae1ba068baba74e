"""End to end, as an agent built on the OpenAI SDK or LangChain would call the Harness: the
whole local stack through Envoy's mTLS listener (`/v1/*`), the demo agent's certificate and a
user's JWT as the API key. Same identity, policy, redaction, audit and cost as the gRPC API."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx2
import openai
import pytest
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from langchain_openai import ChatOpenAI

from tests.e2e.calls import bearer as _bearer
from tests.e2e.calls import demo_channel as _demo_channel
from tests.e2e.calls import generate as _generate

pytestmark = pytest.mark.e2e
MODEL = "llama-3-8b"
ASK = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Summarise the ledger policy"},
]


def _tls(stack) -> ssl.SSLContext:
    """The agent's certificate and the Harness CA, as its HTTP client carries them."""
    ctx = ssl.create_default_context(cafile=stack.env["HARNESS_CA"])
    ctx.load_cert_chain(stack.env["HARNESS_CERT"], stack.env["HARNESS_KEY"])
    return ctx


def _async_client(stack, user: str = "alice") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=stack.env["HARNESS_OPENAI_BASE_URL"],
        api_key=stack.token(user),
        http_client=httpx2.AsyncClient(verify=_tls(stack)),
        max_retries=0,
    )


async def _records(channel, token: str, request_id: str, at_least: int) -> list:
    audit = audit_pb2_grpc.AuditStub(channel)
    query = audit_pb2.QueryRequest(filter=audit_pb2.AuditFilter(request_id=request_id))
    records = []
    for _ in range(50):  # events ship asynchronously, within a second or so
        records = (await audit.Query(query, metadata=_bearer(token), timeout=10)).records
        if len(records) >= at_least:
            break
        await asyncio.sleep(0.2)
    return [r.event for r in records]


def _requests(report) -> int:
    return sum(r.requests for r in report.rows if r.group.get("agent") == "demo-agent")


async def test_openai_sdk_streams_and_the_call_is_audited_and_charged_once(stack):
    alice = stack.token("alice")
    headers = {
        "x-harness-session-id": "oa-session",
        "x-harness-step-id": "oa-step-1",
        "x-request-id": "oa-e2e-1",
    }
    async with _demo_channel(stack) as channel:
        cost = cost_pb2_grpc.CostStub(channel)
        report = cost_pb2.ReportRequest(group_by=["agent"])
        before = await cost.Report(report, metadata=_bearer(alice), timeout=10)
        async with _async_client(stack) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=ASK, max_tokens=12, stream=True,
                stream_options={"include_usage": True}, extra_headers=headers,
            )  # fmt: skip
            chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip() and chunks[-1].usage.completion_tokens == 12
        events = await _records(channel, alice, "oa-e2e-1", 1)
        after = before
        for _ in range(50):
            after = await cost.Report(report, metadata=_bearer(alice), timeout=10)
            if _requests(after) > _requests(before):
                break
            await asyncio.sleep(0.2)
    [call] = [e for e in events if e.kind == common_pb2.AUDIT_EVENT_KIND_MODEL_CALL]
    assert (call.actor.user, call.actor.agent, call.model) == ("alice", "demo-agent", MODEL)
    assert (call.correlation.session_id, call.correlation.step_id) == ("oa-session", "oa-step-1")
    assert call.details["frontdoor"] == "openai" and call.details["output_tokens"] == 12
    assert _requests(after) == _requests(before) + 1


def test_sync_sdk_and_langchain_get_answers(stack):
    base, token = stack.env["HARNESS_OPENAI_BASE_URL"], stack.token("alice")
    with openai.OpenAI(base_url=base, api_key=token, http_client=httpx2.Client(verify=_tls(stack))) as client:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK, max_tokens=8)
        models = [m.id for m in client.models.list()]
    answer = raw.parse()
    assert answer.choices[0].message.content and answer.usage.completion_tokens == 8
    assert (
        raw.headers["x-harness-deployment"] in (f"{MODEL}@sim-0", f"{MODEL}@sim-2")
        and raw.headers["x-request-id"]
    )
    assert models == [MODEL, "all-minilm-l6-v2"]  # what demo-agent's policy lets it use
    llm = ChatOpenAI(
        model=MODEL, base_url=base, api_key=token, max_tokens=8, max_retries=0,
        http_client=httpx2.Client(verify=_tls(stack)), http_async_client=httpx2.AsyncClient(verify=_tls(stack)),
    )  # fmt: skip
    reply = llm.invoke([("system", "You answer briefly."), ("human", "What is a ledger?")])
    assert reply.content and reply.response_metadata["finish_reason"] == "length"
    pieces = [chunk.content for chunk in llm.stream("What is a ledger?")]
    assert len([p for p in pieces if p]) >= 2


async def test_errors_carry_the_grpc_message_and_the_sdk_exception(stack):
    async with _demo_channel(stack) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as grpc_denied:
            await _generate(channel, _bearer(stack.token("mallory")))
    async with _async_client(stack, "mallory") as client:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.chat.completions.create(model=MODEL, messages=ASK)
    assert denied.value.body["message"] == grpc_denied.value.details()
    async with _async_client(stack) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-4o", messages=ASK)
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model=MODEL, messages=ASK, temperature=3)
    assert bad.value.body["param"] == "temperature"
    client = openai.AsyncOpenAI(
        base_url=stack.env["HARNESS_OPENAI_BASE_URL"], api_key="hk_0_wrong", max_retries=0,
        http_client=httpx2.AsyncClient(verify=_tls(stack)),
    )  # fmt: skip
    async with client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()


async def test_pii_in_messages_is_redacted_and_never_reaches_the_audit_log(stack):
    alice = stack.token("alice")
    messages = [{"role": "user", "content": [{"type": "text", "text": "请联系客户 13812345678，核对账户"}]}]
    async with _async_client(stack) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=4
        )
    async with _demo_channel(stack) as channel:
        events = await _records(channel, alice, raw.headers["x-request-id"], 2)
    kinds = {e.kind for e in events}
    assert {common_pb2.AUDIT_EVENT_KIND_MODEL_CALL, common_pb2.AUDIT_EVENT_KIND_REDACTION} <= kinds
    assert all("13812345678" not in str(e) for e in events)


def test_curl_shows_the_event_stream_over_http1(stack):
    env = stack.env
    body = '{"model": "llama-3-8b", "stream": true, "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]}'
    out = subprocess.run(
        ["curl", "-sS", "-N", "--http1.1", "--cacert", env["HARNESS_CA"], "--cert", env["HARNESS_CERT"],
         "--key", env["HARNESS_KEY"], "-H", f"Authorization: Bearer {stack.token('alice')}",
         "-H", "Content-Type: application/json", "-d", body, f"{env['HARNESS_OPENAI_BASE_URL']}/chat/completions"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    events = [line for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert '"object":"chat.completion.chunk"' in events[0] and events[-1] == "data: [DONE]"


def test_the_readme_snippet_runs_as_printed(stack):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()

    def block(marker: str) -> str:
        text = readme.split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->", 1)[0]
        return text.split("```python\n", 1)[1].rsplit("```", 1)[0]

    # The tools snippet continues the first: the demo model (llama-3 family) calls the function.
    code = block("openai-snippet") + block("openai-tools-snippet")
    env = {**os.environ, **stack.env, "HARNESS_TOKEN": stack.token("alice")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 4, out.stdout  # the answer, the streamed one, LangChain's, the one after the tool


def _harness(stack, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *argv, "--root", str(stack.root)],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip


def test_an_agent_bound_key_calls_without_a_certificate_on_the_key_listener(stack):
    """harness agents api-key-auth + keys create --agent, then the SDK with only the Harness CA
    (no client certificate) on $HARNESS_OPENAI_KEY_BASE_URL; off again refuses the key."""
    refused = _harness(stack, "keys", "create", "alice", "--project", "ledger", "--agent", "demo-agent")
    assert refused.returncode == 1 and "api-key-auth demo-agent on" in refused.stderr
    assert _harness(stack, "agents", "api-key-auth", "demo-agent", "on").returncode == 0
    try:
        made = _harness(
            stack, "keys", "create", "alice", "--project", "ledger", "--agent", "demo-agent", "--json"
        )
        assert made.returncode == 0, made.stderr
        secret = json.loads(made.stdout)["secret"]
        ca_only = ssl.create_default_context(cafile=stack.env["HARNESS_CA"])
        url = stack.env["HARNESS_OPENAI_KEY_BASE_URL"]
        client = openai.OpenAI(
            base_url=url, api_key=secret, http_client=httpx2.Client(verify=ca_only), max_retries=0
        )
        with client:
            answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
            assert answer.choices[0].message.content
            with pytest.raises(openai.AuthenticationError):  # alice's JWT names no agent there
                client.with_options(api_key=stack.token("alice")).chat.completions.create(
                    model=MODEL, messages=ASK, max_tokens=4
                )
        assert _harness(stack, "agents", "api-key-auth", "demo-agent", "off").returncode == 0
        client = openai.OpenAI(
            base_url=url, api_key=secret, http_client=httpx2.Client(verify=ca_only), max_retries=0
        )
        with client, pytest.raises(openai.AuthenticationError) as off:
            for _ in range(50):  # the routers hear the switch on their Watch stream
                client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
                time.sleep(0.1)
        # A router that had the key cached says why; one that asks the registry says only "rejected".
        assert any(m in off.value.message for m in ("does not accept API keys", "API key rejected"))
    finally:
        _harness(stack, "agents", "api-key-auth", "demo-agent", "off")
