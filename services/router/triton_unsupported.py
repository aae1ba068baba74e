"""The RPCs of Triton's GRPCInferenceService the router's front door does not serve.

Each answers UNIMPLEMENTED with what to use instead, as a Triton built without the feature
would (the generated base class would raise NotImplementedError, which surfaces as INTERNAL).
"""

from __future__ import annotations

from typing import Any, NoReturn

from services.common.errors import Unimplemented


def _unsupported(feature: str, instead: str) -> NoReturn:
    raise Unimplemented(f"{feature} is not supported by the Harness front door; {instead}")


_SHM = "send tensors in the request"


class UnsupportedTritonRpcs:
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        _unsupported("model statistics", "the router's /metrics and the pool report per-model load")

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        _unsupported("model control", "deploy models with `harness deployments deploy`")

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        _unsupported("model control", "undeploy models with `harness deployments undeploy`")

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        _unsupported("system shared memory", _SHM)

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        _unsupported("system shared memory", _SHM)

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        _unsupported("system shared memory", _SHM)

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        _unsupported("CUDA shared memory", _SHM)

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        _unsupported("CUDA shared memory", _SHM)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        _unsupported("CUDA shared memory", _SHM)

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        _unsupported("trace settings", "every call is traced in the audit log")

    async def LogSettings(self, request: Any, context: Any) -> Any:
        _unsupported("log settings", "set the router's log level at start")
