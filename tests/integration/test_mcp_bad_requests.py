"""The MCP front door refuses what is not a well-formed request before the SDK or the tool path
sees it, as a JSON-RPC error or a tool error naming what is wrong (same real server as
test_mcp_frontdoor: Envoy, mTLS, the real ToolInvoker)."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest

from services.router.mcp_front import REFUSED
from tests.integration.test_mcp_frontdoor import front  # noqa: F401 (the fixture)

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_a_get_is_405_at_once_and_arguments_json_cannot_carry_are_a_tool_error(front):  # noqa: F811
    """Stateless MCP has no server-to-client stream: a GET is refused, not held open forever.
    NaN, Infinity and deep nesting, which the gRPC path's Struct check refuses, are refused alike."""
    headers = {
        "authorization": f"Bearer {front.tokens['alice']}",
        "accept": "application/json, text/event-stream",
    }

    def call(arguments: str) -> bytes:
        return (
            b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"ledger.read","arguments":%s}}'
            % (arguments.encode())
        )

    front.tool.calls.clear()
    async with httpx2.AsyncClient(verify=front.tls("rpa"), timeout=10, headers=headers) as http:
        get = await asyncio.wait_for(http.get(front.url), 5)
        answers = [
            await http.post(front.url, content=call(args), headers={"content-type": "application/json"})
            for args in ('{"account":NaN}', '{"account":[-Infinity]}', '{"a":' * 16 + "1" + "}" * 16)
        ]
    assert get.status_code == 405 and get.headers["allow"] == "POST"
    assert "send each MCP request as a POST" in get.json()["error"]["message"]
    texts = []
    for answer in answers:
        data = json.loads(answer.text.split("data: ", 1)[1])
        assert data["id"] == 7 and data["result"]["isError"], answer.text
        texts.append(data["result"]["content"][0]["text"])
    assert texts[0] == "arguments holds nan; JSON numbers must be finite"
    assert texts[1] == "arguments holds -inf; JSON numbers must be finite"
    assert texts[2] == "arguments nests deeper than 16 levels"
    assert front.tool.calls == []


async def test_a_body_that_is_not_one_json_rpc_request_is_refused_naming_what_is_wrong(front):  # noqa: F811
    """Instead of the SDK's pydantic dump (-32602 for a batch), its bare "Invalid request
    parameters" (arguments of the wrong type) and its plain-text 413."""
    headers = {
        "authorization": f"Bearer {front.tokens['alice']}",
        "accept": "application/json, text/event-stream",
    }
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call"}
    bodies = {
        "batch": [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}],
        "number": 42,
        "no version": {"id": 1, "method": "tools/list"},
        "params a string": {**call, "params": "x"},
        "arguments a string": {**call, "params": {"name": "ledger.read", "arguments": "account=1"}},
        "name a number": {**call, "params": {"name": 5, "arguments": {}}},
        "huge": {**call, "params": {"name": "ledger.read", "arguments": {"a": "x" * 200_000}}},
    }
    front.tool.calls.clear()
    async with httpx2.AsyncClient(verify=front.tls("rpa"), timeout=10, headers=headers) as http:
        answers = {name: await http.post(front.url, json=body) for name, body in bodies.items()}
        form = await http.post(front.url, content=b"{}", headers={"content-type": "text/plain"})
        async with front.session("rpa") as session:  # a well-formed call still goes through
            fine = await session.call_tool("ledger.read", {"account": "1"})
    errors = {name: (a.status_code, a.json()["id"], a.json()["error"]["code"]) for name, a in answers.items()}
    assert errors == {
        "batch": (400, None, -32600), "number": (400, None, -32600), "no version": (400, 1, -32600),
        "params a string": (400, 3, -32602), "arguments a string": (400, 3, -32602),
        "name a number": (400, 3, -32602), "huge": (413, None, -32600),
    }  # fmt: skip
    messages = {name: a.json()["error"]["message"] for name, a in answers.items()}
    assert messages["batch"] == "batches are not supported: send one JSON-RPC message per POST"
    assert messages["arguments a string"] == "tools/call: 'params.arguments' must be an object, got a string"
    assert "'params.name' must be a string" in messages["name a number"]
    assert "the limit is" in messages["huge"]
    assert not fine.is_error and len(front.tool.calls) == 1
    assert form.status_code == 415 and form.json()["error"] == {
        "code": -32600,
        "message": "content-type must be application/json, got text/plain",
    }


async def test_a_nul_in_the_tool_name_or_arguments_is_refused_before_any_record(front):  # noqa: F811
    """The gRPC path refuses NUL in every string; here it would reach the audit record of a
    denial (tool 'nope\\u0000' is not pinned), which the audit service refuses, holding up every
    record shipped after it."""
    front.tool.calls.clear(), front.events.audit.clear()
    async with front.session("rpa") as session:
        in_name = await session.call_tool("nope\x00.read", {"account": "1"})
        in_value = await session.call_tool("ledger.read", {"account": "1\x00"})
        in_key = await session.call_tool("ledger.read", {"acc\x00ount": "1"})
    assert in_name.is_error and in_name.meta["harness/code"] == "INVALID_ARGUMENT"
    assert "the tool's name holds a string with a NUL character" in in_name.content[0].text
    for refused in (in_value, in_key):
        assert refused.is_error and "arguments holds a string with a NUL character" in refused.content[0].text
    assert front.events.audit == [] and front.tool.calls == []


async def test_a_bad_session_or_step_header_is_a_400_json_rpc_error_naming_it(front):  # noqa: F811
    """The rule of every door: a lineage id other than visible ASCII, or past 256 characters, is
    refused before the SDK or the tool path sees the request, so no record carries it."""
    headers = {
        "authorization": f"Bearer {front.tokens['alice']}",
        "accept": "application/json, text/event-stream",
    }
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    sent = [
        ("x-harness-session-id", b"case\t1"),
        ("x-harness-step-id", b"caf\xe9"),
        ("x-harness-step-id", b"step 2"),
        ("x-harness-session-id", b"s" * 257),
    ]
    front.tool.calls.clear(), front.events.audit.clear()
    async with httpx2.AsyncClient(verify=front.tls("rpa"), timeout=10, headers=headers) as http:
        answers = [
            (name, await http.post(front.url, json=listing, headers={name: value})) for name, value in sent
        ]
    for name, answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == REFUSED  # as a credential header sent twice is
        assert answer.json()["error"]["message"].startswith(f"the {name} header "), answer.text
    assert "is 257 characters; the limit is 256" in answers[3][1].json()["error"]["message"]
    assert front.events.audit == [] and front.tool.calls == []
