"""The simulator's HTTP side: ``/metrics`` (Prometheus) and ``/faults`` (runtime fault settings).

Triton serves metrics on their own HTTP port (8002); the fault endpoint is the simulator's
own addition on that port, so operators and benchmarks can change failure injection while
traffic runs::

    curl -s localhost:8002/faults                                   # current settings
    curl -s -X PUT localhost:8002/faults -d '{"rate": 0.1, "kinds": ["unavailable"]}'

A PUT changes only the fields it names and answers the new settings; a bad body gets 400
with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry

from .faults import FaultInjector, FaultSettingsError
from .metrics import exposition

MAX_BODY = 64 * 1024
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the classic text format

StartResponse = Callable[..., Any]


def _json(start_response: StartResponse, status: str, body: Any) -> list[bytes]:
    data = json.dumps(body, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def build_http_app(registry: CollectorRegistry, faults: FaultInjector) -> Callable[..., Iterable[bytes]]:
    def metrics_app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        body = exposition(registry)
        start_response("200 OK", [("Content-Type", METRICS_CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body]

    def faults_app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        method = environ["REQUEST_METHOD"]
        if method == "GET":
            return _json(start_response, "200 OK", {**faults.settings.to_json(), "injected": faults.injected})
        if method not in ("PUT", "POST"):
            return _json(start_response, "405 Method Not Allowed", {"error": "use GET or PUT"})
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length > MAX_BODY:
                raise FaultSettingsError(f"body larger than {MAX_BODY} bytes")
            changes = json.loads(environ["wsgi.input"].read(length) or b"{}")
            if not isinstance(changes, dict):
                raise FaultSettingsError("body must be a JSON object of settings")
            faults.settings = faults.settings.updated(changes)
        except (ValueError, TypeError) as exc:  # JSONDecodeError and FaultSettingsError are ValueErrors
            return _json(start_response, "400 Bad Request", {"error": str(exc)})
        return _json(start_response, "200 OK", faults.settings.to_json())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").rstrip("/") == "/faults":
            return faults_app(environ, start_response)
        return metrics_app(environ, start_response)

    return app
