"""The router's gRPC servicer without a server: what it answers before the core runs."""

from __future__ import annotations

import grpc
import pytest
from harness.router.v1 import router_pb2

from services.common.errors import Unimplemented
from services.router.servicer import RouterServicer


async def test_invoke_tool_on_a_router_without_tools_is_unimplemented_not_internal():
    servicer = RouterServicer(router=None, tools=None)  # type: ignore[arg-type]
    request = router_pb2.InvokeToolRequest(tool="ledger", action="read")
    with pytest.raises(Unimplemented, match=r"^this router serves no tools") as refused:
        await servicer.InvokeTool(request, context=None)  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED
