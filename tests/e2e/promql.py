"""Reading the stack's Prometheus over its HTTP API, for the monitoring tests."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.e2e.stack import prometheus_installed


def prometheus_url(stack) -> str:
    """The stack's Prometheus; fails under CI=true when it is not installed, else skips."""
    if not prometheus_installed():
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is required in CI (CI=true): run `make install`")
        pytest.skip("prometheus not installed (make install)")
    return stack.env["HARNESS_PROMETHEUS_URL"]


def api(url: str, path: str, **params: str) -> dict:
    """GET /api/v1/<path>; returns `data`, or raises AssertionError with Prometheus's error."""
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    assert body.get("status") == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
    return body["data"]


def instant(url: str, expr: str) -> list[dict]:
    return api(url, "query", query=expr)["result"]


def eventually(check, timeout_s: float = 60.0, every_s: float = 1.0):
    """Calls `check` until it returns something truthy; returns that, or the last value."""
    deadline = time.monotonic() + timeout_s
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(every_s)
        value = check()
    return value
