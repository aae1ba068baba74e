"""Which gRPC methods Envoy may retry: read from the protobuf descriptors, not a hand-kept list.

A method qualifies when it is unary (neither side streams) and its ``MethodOptions`` declare
``idempotency_level`` NO_SIDE_EFFECTS or IDEMPOTENT. Retrying anything else could run a
write twice or replay half a stream.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor

HARNESS_PACKAGES = tuple(f"harness.{svc}.v1" for svc in ("router", "registry", "pool", "audit", "cost"))
_RETRYABLE_LEVELS = frozenset(
    {descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT}
)
# Generated code lives in <repo>/gen (see .gitignore); tried only when a plain import fails.
_GEN_DIR = Path(__file__).resolve().parents[2] / "gen"


class ProtosNotGeneratedError(ImportError):
    """The harness ``*_pb2`` modules are not importable (protos not generated into gen/)."""


def method_path(method: MethodDescriptor) -> str:
    """The HTTP/2 ``:path`` of a gRPC method: ``/<package>.<Service>/<Method>``."""
    return f"/{method.containing_service.full_name}/{method.name}"


def is_retryable(method: MethodDescriptor) -> bool:
    if method.client_streaming or method.server_streaming:
        return False
    return method.GetOptions().idempotency_level in _RETRYABLE_LEVELS


def _file_descriptor(item: ModuleType | FileDescriptor) -> FileDescriptor:
    if isinstance(item, FileDescriptor):
        return item
    fd = getattr(item, "DESCRIPTOR", None)
    if not isinstance(fd, FileDescriptor):
        raise TypeError(f"{item!r} is neither a FileDescriptor nor a generated *_pb2 module")
    return fd


def _pb2_modules(package: str) -> list[ModuleType]:
    pkg = importlib.import_module(package)
    names = sorted(
        m.name for m in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}.") if m.name.endswith("_pb2")
    )
    return [importlib.import_module(n) for n in names]


def harness_modules() -> list[ModuleType]:
    """Every ``harness.<svc>.v1.*_pb2`` module; raises ProtosNotGeneratedError if there are none."""

    def load() -> list[ModuleType]:
        return [m for pkg in HARNESS_PACKAGES for m in _pb2_modules(pkg)]

    try:
        modules = load()
    except ImportError as first:
        if not _GEN_DIR.is_dir() or str(_GEN_DIR) in sys.path:
            raise ProtosNotGeneratedError(_missing_msg(first)) from first
        sys.path.append(str(_GEN_DIR))
        importlib.invalidate_caches()
        try:
            modules = load()
        except ImportError as second:
            raise ProtosNotGeneratedError(_missing_msg(second)) from second
    if not modules:
        raise ProtosNotGeneratedError(_missing_msg(None))
    return modules


def _missing_msg(err: BaseException | None) -> str:
    why = f" ({err})" if err else ""
    return (
        f"harness protobuf modules not importable{why}: generate protos/ into {_GEN_DIR} "
        f"and put it on sys.path, or pass modules= explicitly"
    )


def idempotent_unary_methods(modules: Iterable[ModuleType | FileDescriptor] | None = None) -> list[str]:
    """Sorted full paths (``/pkg.Service/Method``) of the retry-safe unary methods.

    ``modules``: generated ``*_pb2`` modules or FileDescriptors; default: the harness services'
    modules (``harness.{router,registry,pool,audit,cost}.v1``).
    """
    items = harness_modules() if modules is None else list(modules)
    paths = {
        method_path(method)
        for item in items
        for service in _file_descriptor(item).services_by_name.values()
        for method in service.methods
        if is_retryable(method)
    }
    return sorted(paths)
