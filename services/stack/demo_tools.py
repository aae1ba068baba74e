"""The demo's tool services as children of `harness up` (today: the ledger the demo agents use).

The demo data names the ledger tool's endpoint at the default port; the stack points it at the
port this stack actually uses (`--free-ports`), so what the registry is seeded with is reachable.
"""

from __future__ import annotations

import copy
import socket
import sys
from pathlib import Path
from typing import Any

from services.stack.procs import Child

LEDGER_TOOL = "ledger"


def ledger_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/ledger"


def ledger_child(port: int, logs: Path) -> Child:
    argv = [sys.executable, "-m", "services.demo.ledger", "--host", "127.0.0.1", "--port", str(port)]
    return Child("ledger-tool", argv, logs / "ledger-tool.log")


def with_ledger_at(demo: dict[str, Any], port: int) -> dict[str, Any]:
    """A copy of the demo data whose ledger tool is served by this stack's ledger child."""
    out = copy.deepcopy(demo)
    for tool in out.get("registry", {}).get("tools", []):
        if tool.get("name") == LEDGER_TOOL:
            tool["endpoint"] = ledger_url(port)
    return out


def ledger_ready(port: int) -> bool:
    """The ledger accepts connections (it serves from the moment it listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def banner_line(port: int) -> str:
    return f"  {'demo ledger tool':<25} {ledger_url(port)}  (HTTP JSON; agents call it through InvokeTool)"
