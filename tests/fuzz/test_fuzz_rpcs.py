"""Fuzz every public RPC of every service through real servers on port 0.

Each method gets its plausible base request, then that request with one field at a time set to
a malformed, oversized or boundary value (see generate.py), then bytes that do not parse. Every
answer must be a status a caller can act on: never INTERNAL or UNKNOWN, never a hang past the
deadline, and every server must still be serving at the end.

Bounded: every mutation of every field, about 2,600 calls, half a minute here. FUZZ_CASES
samples fewer per method (with FUZZ_SEED) for a quicker run.
"""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from harness.pool.v1 import pool_pb2
from harness.registry.v1 import registry_pb2
from harness.router.v1 import router_pb2

from tests.fuzz.generate import cases, message_class
from tests.fuzz.mesh import start_mesh

CASES_PER_METHOD = int(os.environ.get("FUZZ_CASES", "1000"))
SEED = int(os.environ.get("FUZZ_SEED", "2024"))
DEADLINE_S = 2.0
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# Streams that stay open by design (change feeds): a live stream past the deadline is fine.
LIVE_STREAMS = {"/harness.registry.v1.Registry/Watch", "/harness.pool.v1.Pool/WatchEndpoints"}
# The router first: later registry cases change what it follows (JWT key, agent states).
SERVICES = {
    "router": router_pb2.DESCRIPTOR.services_by_name["Router"],
    "registry": registry_pb2.DESCRIPTOR.services_by_name["Registry"],
    "pool": pool_pb2.DESCRIPTOR.services_by_name["Pool"],
    "audit": audit_pb2.DESCRIPTOR.services_by_name["Audit"],
    "cost": cost_pb2.DESCRIPTOR.services_by_name["Cost"],
}
# Producers' batches: the service certificate alone (a user token would make it a person's call).
SERVICE_ONLY = {"Audit/Ingest", "Cost/Record"}


def _ts(offset_s: int = 0):
    from google.protobuf.timestamp_pb2 import Timestamp

    out = Timestamp()
    out.FromSeconds(int(time.time()) + offset_s)
    return out


def _pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def bases() -> dict[str, object]:
    """Plausible requests, so mutations reach the checks past "x is required"."""
    r, p, a, c, common = registry_pb2, pool_pb2, audit_pb2, cost_pb2, common_pb2
    page = common.PageRequest(page_size=10)
    sampling = common.SamplingParams(max_tokens=8, temperature=0.5, top_p=0.9, stop=["\n"])
    actor = common.Actor(user="bob", agent="demo-agent", agent_version="v1", project="ledger", team="finance")
    corr = common.Correlation(request_id="r1", trace_id="0" * 32, session_id="s1", step_id="1")
    usage = common.UsageEvent(
        event_id="u1", time=_ts(), actor=actor, correlation=corr, model="llama-3-8b", gpu_type="H100-80GB",
        usage=common.Usage(input_tokens=10, output_tokens=5, gpu_seconds=0.5),
    )  # fmt: skip
    event = common.AuditEvent(
        event_id="e1", time=_ts(), kind=common.AUDIT_EVENT_KIND_MODEL_CALL, actor=actor, correlation=corr,
        object="agent:demo-agent", action="invoke", status="OK", source="router",
    )  # fmt: skip
    event.details["tokens"] = 3
    version = r.AgentVersion(
        version="fz1", models=["llama-3-8b"], tools=["ledger"], default_sampling=sampling
    )
    version.metadata["git"] = "abc"
    args = {"id": 1}
    tool_call = router_pb2.InvokeToolRequest(tool="ledger", version="1", action="read", idempotency_key="k1")
    tool_call.arguments.update(args)
    approval = a.Approval(
        requester=actor, correlation=corr, tool="ledger", action="read", risk=common.RISK_CLASS_READ
    )
    approval.arguments.update(args)
    deploy = p.DeployRequest(model="llama-3-8b", replicas=1, owner="team:finance")
    deploy.idle_ttl.FromSeconds(60)
    return {
        "Registry/CreateTeam": r.CreateTeamRequest(team=r.Team(name="fz-team", display_name="Fz")),
        "Registry/ListTeams": r.ListTeamsRequest(page=page),
        "Registry/CreateProject": r.CreateProjectRequest(project=r.Project(name="fz-p", team="finance")),
        "Registry/ListProjects": r.ListProjectsRequest(team="finance", page=page),
        "Registry/CreateUser": r.CreateUserRequest(user=r.User(name="fz-u", team="finance", roles=["viewer"])),
        "Registry/GetUser": r.GetUserRequest(name="bob"),
        "Registry/ListUsers": r.ListUsersRequest(team="finance", page=page),
        "Registry/SetUserLimits": r.SetUserLimitsRequest(user="bob", rpm_limit=10, tpm_limit=1000),
        "Registry/CreateApiKey": r.CreateApiKeyRequest(user="bob", project="ledger", description="k", expire_time=_ts(86400)),
        "Registry/ListApiKeys": r.ListApiKeysRequest(user="bob", page=page),
        "Registry/RevokeApiKey": r.RevokeApiKeyRequest(id="0123456789abcdef"),
        "Registry/AuthenticateApiKey": r.AuthenticateApiKeyRequest(secret="hk_0123_abc"),
        "Registry/CreateAgent": r.CreateAgentRequest(agent=r.Agent(
            name="fz-agent", project="ledger", type=common.AGENT_TYPE_RAG, description="d",
            slo=r.SloTargets(slo_class=common.SLO_CLASS_BATCH, ttft_ms=500),
            data_policy=r.DataPolicy(pii=[r.PiiRule(kind="phone", mode=r.MASK_MODE_HASH)]), rpm_limit=5,
        )),
        "Registry/GetAgent": r.GetAgentRequest(name="demo-agent"),
        "Registry/ListAgents": r.ListAgentsRequest(project="ledger", page=page),
        "Registry/CreateAgentVersion": r.CreateAgentVersionRequest(agent="demo-agent", version=version),
        "Registry/SetAgentState": r.SetAgentStateRequest(agent="demo-agent", state=common.AGENT_STATE_DRAINING),
        "Registry/SetTrafficSplit": r.SetTrafficSplitRequest(agent="demo-agent", traffic=[r.TrafficWeight(version="v1", weight=100)]),
        "Registry/RollbackTrafficSplit": r.RollbackTrafficSplitRequest(agent="demo-agent"),
        "Registry/RegisterModel": r.RegisterModelRequest(model=r.Model(
            name="fz-model", triton_model="fz", family="f", parameters_b=1, quantization="fp16", memory_gib=2,
            context_length=4096,
        )),
        "Registry/ListModels": r.ListModelsRequest(page=page),
        "Registry/RegisterTool": r.RegisterToolRequest(tool=r.Tool(
            name="fz-tool", version="1", endpoint="http://127.0.0.1:9/x", description="d",
            actions=[r.ToolAction(
                name="read", risk=common.RISK_CLASS_READ, idempotent=True, cache_ttl_s=5, description="d",
                input_schema='{"type":"object","properties":{"a":{"type":"string","pattern":"^x"}}}',
            )],
        )),
        "Registry/ListTools": r.ListToolsRequest(page=page),
        "Registry/AddPolicy": r.AddPolicyRequest(rule=r.PolicyRule(ptype="p", values=["role:fz", "ledger", "agent:demo-agent", "invoke", "allow"])),
        "Registry/RemovePolicy": r.RemovePolicyRequest(rule=r.PolicyRule(ptype="g", values=["bob", "role:fz", "ledger"])),
        "Registry/ListPolicies": r.ListPoliciesRequest(domain="ledger"),
        "Registry/CheckAccess": r.CheckAccessRequest(subject="bob", domain="ledger", object="agent:demo-agent", action="invoke"),
        "Registry/SetJwtSettings": r.SetJwtSettingsRequest(settings=r.JwtSettings(issuer="i", audience="a", public_key_pem=_pem())),
        "Registry/DeleteTeam": r.DeleteTeamRequest(name="fz-team"),
        "Registry/DeleteProject": r.DeleteProjectRequest(name="fz-p"),
        "Registry/DeleteUser": r.DeleteUserRequest(name="fz-u"),
        "Registry/DeleteAgent": r.DeleteAgentRequest(name="fz-agent"),
        "Registry/DeleteAgentVersion": r.DeleteAgentVersionRequest(agent="demo-agent", version="fz1"),
        "Registry/DeleteModel": r.DeleteModelRequest(name="fz-model"),
        "Registry/DeleteTool": r.DeleteToolRequest(name="fz-tool", version="1"),
        "Registry/Watch": r.WatchRequest(since_revision=0),
        "Registry/SetSecret": r.SetSecretRequest(name="fz-secret", value="Bearer fz"),
        "Registry/SetAgentApiKeyAuth": r.SetAgentApiKeyAuthRequest(agent="demo-agent", enabled=False),
        "Registry/ListSecrets": r.ListSecretsRequest(),
        "Registry/DeleteSecret": r.DeleteSecretRequest(name="fz-secret"),
        "Registry/RevealSecret": r.RevealSecretRequest(name="fz-secret"),
        "Pool/RegisterEndpoint": p.RegisterEndpointRequest(endpoint=p.Endpoint(
            name="fz-ep", address="127.0.0.1:9", metrics_url="http://127.0.0.1:9/metrics", labels={"zone": "a"},
            gpu_type="H100-80GB", gpu_count=1, gpu_memory_bytes=80 << 30,
        )),
        "Pool/DeregisterEndpoint": p.DeregisterEndpointRequest(name="fz-ep"),
        "Pool/ListEndpoints": p.ListEndpointsRequest(model="llama-3-8b"),
        "Pool/ListGpus": p.ListGpusRequest(endpoint="fz-ep"),
        "Pool/Deploy": deploy,
        "Pool/Undeploy": p.UndeployRequest(model="llama-3-8b", owner="team:finance"),
        "Pool/Plan": p.PlanRequest(model="llama-3-8b", replicas=1),
        "Pool/WatchEndpoints": p.WatchEndpointsRequest(since_revision=0),
        "Audit/Ingest": a.IngestRequest(events=[event]),
        "Audit/Query": a.QueryRequest(filter=a.AuditFilter(agent="demo-agent", start_time=_ts(-3600)), page=page),
        "Audit/Lineage": a.LineageRequest(trace_id="0" * 32),
        "Audit/Export": a.ExportRequest(filter=a.AuditFilter(agent="demo-agent"), format=a.EXPORT_FORMAT_JSONL),
        "Audit/Verify": a.VerifyRequest(from_sequence=1),
        "Audit/RequestApproval": a.RequestApprovalRequest(approval=approval, request_key="rk1"),
        "Audit/GetApproval": a.GetApprovalRequest(id="nope"),
        "Audit/ListApprovals": a.ListApprovalsRequest(page=page),
        "Audit/DecideApproval": a.DecideApprovalRequest(id="nope", approve=True, comment="ok"),
        "Cost/Record": c.RecordRequest(events=[usage]),
        "Cost/SetPrice": c.SetPriceRequest(price=c.Price(kind=c.PRICE_KIND_GPU_HOUR, subject="H100-80GB", micro_usd=2_000_000, effective_time=_ts(-60))),
        "Cost/ListPrices": c.ListPricesRequest(at_time=_ts()),
        "Cost/SetBudget": c.SetBudgetRequest(budget=c.Budget(
            name="fz-b", scope=c.BUDGET_SCOPE_PROJECT, subject="ledger", period=c.BUDGET_PERIOD_DAILY,
            limit_micro_usd=1_000_000, alert_percent=[50, 90],
        )),
        "Cost/GetBudget": c.GetBudgetRequest(name="fz-b"),
        "Cost/ListBudgets": c.ListBudgetsRequest(scope=c.BUDGET_SCOPE_PROJECT),
        "Cost/DeleteBudget": c.DeleteBudgetRequest(name="fz-gone"),
        "Cost/Report": c.ReportRequest(group_by=["project"], start_time=_ts(-3600), end_time=_ts()),
        "Cost/Advise": c.AdviseRequest(project="ledger", period_days=7),
        "Cost/ListAlerts": c.ListAlertsRequest(budget="fz-b", limit=10),
        "Router/Generate": router_pb2.GenerateRequest(prompt="hello", model="llama-3-8b", sampling=sampling),
        "Router/Complete": router_pb2.CompleteRequest(
            messages=[common.ChatMessage(role="user", content="hi")], sampling=sampling, session_id="s1"
        ),
        "Router/InvokeTool": tool_call,
    }  # fmt: skip


async def _call(
    channel: grpc.aio.Channel, path: str, method: MethodDescriptor, body: bytes, metadata
) -> tuple[grpc.StatusCode, str]:
    """The status of one call with `body` as its request."""
    identity = lambda b: b  # noqa: E731
    try:
        if method.server_streaming:
            call = channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)
            stream = call(body, metadata=metadata, timeout=DEADLINE_S)
            try:
                async for _ in stream:
                    if path in LIVE_STREAMS:
                        break  # it answered; it would stay open by design
            finally:
                stream.cancel()
        else:
            call = channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)
            await call(body, metadata=metadata, timeout=DEADLINE_S)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in BAD:
            return exc.code(), exc.details()
        return exc.code(), ""
    return grpc.StatusCode.OK, ""


@pytest.fixture(params=["sqlite", "postgres"])
async def mesh(request, tmp_path, test_auth, mint_token):
    """The services over SQLite and, in a second run, PostgreSQL (whose column widths and types
    are strict where SQLite's are not)."""
    urls = None
    if request.param == "postgres":
        new_db = request.getfixturevalue("new_postgres_db")
        urls = {name: new_db() for name in ("registry", "audit", "cost")}
    mesh = await start_mesh(tmp_path, test_auth, mint_token, urls)
    deadline = time.monotonic() + 30
    while await mesh.serving("router") != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "the router never got its registry copy"
        await asyncio.sleep(0.05)
    yield mesh
    await mesh.close()


async def test_no_rpc_answers_internal_unknown_or_hangs(mesh):
    known = bases()
    failures: list[str] = []
    total = 0
    for service_name, service in SERVICES.items():
        channel = mesh.channels[service_name]
        metadata = mesh.agent if service_name == "router" else mesh.admin
        for method in service.methods:
            key = f"{service.name}/{method.name}"
            path = f"/{service.full_name}/{method.name}"
            base = known.get(key)
            batch = cases(method.input_type, base, seed=SEED, limit=CASES_PER_METHOD)
            batch.append(("no credentials", (base or message_class(method.input_type)()).SerializeToString()))
            for label, body in batch:
                md = () if label == "no credentials" or key in SERVICE_ONLY else metadata
                total += 1
                code, details = await _call(channel, path, method, body, md)
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:  # once more: the machine may be busy
                    code, details = await _call(channel, path, method, body, md)
                if code in BAD or code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    failures.append(f"{key} [{label}]: {code.name} {details[:200]}")
    for name in ("registry", "pool", "audit", "cost", "router"):
        assert await mesh.serving(name) == health_pb2.HealthCheckResponse.SERVING, f"{name} stopped serving"
    assert total > 500
    assert not failures, f"{len(failures)} of {total} calls failed:\n" + "\n".join(failures)
