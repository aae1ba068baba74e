"""Traffic through the front door that exercises what the dashboards and `harness top` show:
every demo agent, a PII redaction, a refused user, an audit chain verification."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from harness.audit.v1 import audit_pb2, audit_pb2_grpc

from tests.e2e.calls import bearer, channel, generate

AGENTS = ("demo-agent", "risk-agent", "ledger-rpa")


def agent_channel(stack, agent: str) -> grpc.aio.Channel:
    certs = Path(stack.env["HARNESS_CA"]).parent / "agents"
    return channel(stack, certs / f"{agent}.pem", certs / f"{agent}.key")


async def demo_traffic(stack, per_agent: int = 4) -> None:
    alice, mallory = bearer(stack.token("alice")), bearer(stack.token("mallory"))
    for agent in AGENTS:
        async with agent_channel(stack, agent) as ch:
            await asyncio.gather(
                *(
                    generate(ch, alice, prompt=f"Summarise ledger entry {i}", max_tokens=8)
                    for i in range(per_agent)
                )
            )
    async with agent_channel(stack, "demo-agent") as ch:  # its data policy masks phone numbers
        await generate(ch, alice, prompt="Call the customer back on 13812345678", max_tokens=8)
    async with agent_channel(stack, "ledger-rpa") as ch:
        try:
            await generate(ch, mallory, max_tokens=8)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
        else:
            raise AssertionError("mallory has no role on the ledger project and must be refused")
    async with agent_channel(stack, "demo-agent") as ch:
        verify = await audit_pb2_grpc.AuditStub(ch).Verify(
            audit_pb2.VerifyRequest(), metadata=alice, timeout=30
        )
        assert verify.ok
