"""The Node.js client (clients/node) and Node's `openai` package against the whole stack, through
Envoy's mTLS listener as the demo agent: node's own test runner drives the client, then the audit
log is read here to check what the router saw (who called, how far a cancelled stream got)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2

from tests.e2e.calls import bearer, demo_channel
from tests.e2e.stack import REPO

pytestmark = pytest.mark.e2e
CLIENT = REPO / "clients" / "node"
MODEL_CALL, TOOL_CALL = common_pb2.AUDIT_EVENT_KIND_MODEL_CALL, common_pb2.AUDIT_EVENT_KIND_TOOL_CALL
LONG = 4000  # max_tokens of the stream the Node test leaves early (clients/node/test/stack.test.js)


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with clients/node's dependencies installed (`make install` runs npm ci)."""
    found = shutil.which("node")
    missing = (
        "node is not on PATH" if not found
        else "clients/node/node_modules is missing (run `make install`)" if not (CLIENT / "node_modules").is_dir()
        else ""
    )  # fmt: skip
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Node.js client tests need Node in CI: {missing}")
        pytest.skip(missing)
    return found


def node_env(stack, user: str = "alice", **extra: str) -> dict[str, str]:
    """A shell after `source .harness/env`: the stack's variables and a user's token."""
    return {**os.environ, **stack.env, "HARNESS_TOKEN": stack.token(user), **extra}


def snippet(readme: Path, marker: str) -> str:
    block = readme.read_text().split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->", 1)[0]
    return block.split("```js\n", 1)[1].rsplit("```", 1)[0]


def run_module(node: str, code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Runs an ES module from clients/node, where a user saves it next to the installed packages."""
    argv = [node, "--input-type=module"]
    return subprocess.run(argv, input=code, cwd=CLIENT, env=env, capture_output=True, text=True, timeout=120)


async def audit_events(stack, request_id: str) -> list[common_pb2.AuditEvent]:
    """The audit events of one request, waiting for the router's outbox to ship them."""
    query = audit_pb2.QueryRequest(filter=audit_pb2.AuditFilter(request_id=request_id))
    async with demo_channel(stack) as channel:
        audit = audit_pb2_grpc.AuditStub(channel)
        for _ in range(100):
            records = (await audit.Query(query, metadata=bearer(stack.token("alice")), timeout=10)).records
            if records:
                return [r.event for r in records]
            await asyncio.sleep(0.2)
    raise AssertionError(f"no audit record of request {request_id}")


async def audit_events_of_kind(stack, request_id: str, kind: int) -> list[common_pb2.AuditEvent]:
    return [e for e in await audit_events(stack, request_id) if e.kind == kind]


async def test_node_client_streams_calls_tools_and_maps_errors(stack, node, tmp_path):
    report = tmp_path / "report.json"
    env = node_env(stack, HARNESS_MALLORY_TOKEN=stack.token("mallory"), HARNESS_NODE_REPORT=str(report))
    argv = [node, "--test", "--test-reporter=tap", "test/stack.test.js"]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=CLIENT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out = (await asyncio.wait_for(proc.communicate(), timeout=300))[0].decode()
    assert proc.returncode == 0, out[-6000:]
    assert "# fail 0" in out and "# skipped 0" in out and "# pass 8" in out, out[-3000:]
    seen = json.loads(report.read_text())

    [call] = await audit_events_of_kind(stack, seen["generateRequestId"], MODEL_CALL)
    # Identity came from the connection (the agent's certificate) and the bearer token.
    assert (call.actor.user, call.actor.agent, call.model) == ("alice", "demo-agent", "llama-3-8b")
    assert (call.correlation.session_id, call.correlation.step_id) == ("node-session", "1")
    assert call.details["frontdoor"] == "grpc" and call.details["output_tokens"] == 12

    tool = await audit_events_of_kind(stack, seen["toolRequestId"], TOOL_CALL)
    assert tool and {(e.tool, e.action) for e in tool} == {("ledger@1", "read")}, tool
    assert {(e.correlation.session_id, e.correlation.step_id) for e in tool} == {("node-session", "2")}

    # Leaving the stream cancelled the generation on the router, long before its max_tokens, and
    # what was sent is on the record (estimated where the engine reports usage only at the end).
    [cancelled] = await audit_events_of_kind(stack, seen["cancelledRequestId"], MODEL_CALL)
    assert cancelled.status == "CANCELLED" and 2 <= cancelled.details["output_tokens"] < LONG, cancelled


def test_client_readme_example_runs_as_printed(stack, node):
    code = snippet(CLIENT / "README.md", "node-grpc-snippet")
    out = run_module(node, code, node_env(stack))
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 3, out.stdout  # the streamed answer, its summary line, the tool's result
    result = json.loads(lines[2])  # other tests on this stack may have written to the ledger
    assert result["ledger"] == "FY2024" and result["count"] == len(result["entries"]), result
    refused = run_module(node, code, node_env(stack, "mallory"))
    assert refused.returncode == 1 and "PermissionDeniedError: " in refused.stderr, refused.stderr


def test_openai_sdk_snippet_runs_as_printed(stack, node):
    code = snippet(REPO / "README.md", "node-openai-snippet")
    out = run_module(node, code, node_env(stack))
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 2, out.stdout  # the answer and the streamed answer
    refused = run_module(node, code, node_env(stack, "mallory"))
    assert refused.returncode == 1 and "PermissionDeniedError: 403" in refused.stderr, refused.stderr
