"""The Node.js client's own unit tests (clients/node/test/unit.test.js, node's test runner): the
gRPC status -> error class mapping, Struct conversion and loading the contract from protos/."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"


def test_node_client_unit_tests_pass():
    node = shutil.which("node")
    if not node or not (CLIENT / "node_modules").is_dir():
        missing = (
            "node is not on PATH" if not node else "clients/node/node_modules is missing (run `make install`)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Node.js client tests need Node in CI: {missing}")
        pytest.skip(missing)
    argv = [node, "--test", "--test-reporter=tap", "test/unit.test.js"]
    out = subprocess.run(argv, cwd=CLIENT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "# fail 0" in out.stdout and "# pass 6" in out.stdout, out.stdout[-2000:]
