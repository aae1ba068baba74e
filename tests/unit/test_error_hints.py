"""Error messages tell a person what to run: the `harness` command, never an RPC name."""

from __future__ import annotations

import ast
from pathlib import Path

from harness.audit.v1 import audit_pb2
from harness.cost.v1 import cost_pb2
from harness.pool.v1 import pool_pb2
from harness.registry.v1 import registry_pb2

SERVICES = Path(__file__).resolve().parents[2] / "services"
# The operators' RPCs (the router's Generate or InvokeTool are what agent developers call).
RPCS = {
    method.name
    for module in (audit_pb2, cost_pb2, pool_pb2, registry_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}


def _texts(node: ast.AST) -> list[str]:
    """The literal text of every string (and f-string part) inside `node`."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _messages(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the literals in raise statements and in prints to stderr."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            out += [(node.lineno, t) for t in _texts(node.exc)]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "_need":  # not-found hints
            out += [(node.lineno, t) for t in _texts(node)]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print":
            if any(k.arg == "file" for k in node.keywords):
                out += [(node.lineno, t) for t in _texts(node)]
        elif isinstance(node, ast.Assign) and any(
            getattr(t, "id", "").endswith("_HINT") for t in node.targets
        ):
            out += [(node.lineno, t) for t in _texts(node.value)]
    return out


def test_no_error_message_names_an_rpc_as_what_to_do():
    assert {"CreateAgentVersion", "SetPrice", "SetTrafficSplit"} <= RPCS
    found = []
    for path in sorted(SERVICES.rglob("*.py")):
        for line, text in _messages(path):
            words = {w.strip("().,;:'`\"") for w in text.split()}
            named = sorted(words & RPCS)
            if named:
                found.append(f"{path.relative_to(SERVICES.parent)}:{line}: {named}: {text!r}")
    assert not found, "error hints must name the harness command, not an RPC:\n" + "\n".join(found)
