"""promtool for the monitoring tests: required under CI=true, a skip elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is required in CI (CI=true): run `make install` (Debian's prometheus)")
        pytest.skip("promtool not installed (make install)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)
