"""`harness endpoints drain`: deregisters, then waits on the endpoint's metrics; an unreadable
metrics URL is said at once (exit 1), not waited on until the deadline."""

from __future__ import annotations

import argparse

from harness.pool.v1 import pool_pb2 as pb

from services.cli import pool_cmds


def drain(
    monkeypatch, in_flight: list[int], metrics_url: str = "http://127.0.0.1:1/metrics"
) -> tuple[int, list]:
    calls: list[str] = []

    def fake_call(ctx, rpc, request):
        calls.append(rpc)
        if rpc == "ListEndpoints":
            return pb.ListEndpointsResponse(
                endpoints=[pb.Endpoint(name="t1", address="h:1", metrics_url=metrics_url)]
            )
        return None

    monkeypatch.setattr(pool_cmds, "_call", fake_call)
    monkeypatch.setattr(pool_cmds, "_in_flight", lambda url: in_flight.pop(0))
    monkeypatch.setattr(pool_cmds.time, "sleep", lambda s: None)
    code = pool_cmds.endpoints_drain(None, argparse.Namespace(name="t1", wait=30.0))
    return code, calls


def test_drain_waits_for_in_flight_requests_to_end(monkeypatch, capsys):
    code, calls = drain(monkeypatch, [2, 1, 0])
    assert code == 0 and calls == ["ListEndpoints", "DeregisterEndpoint"]
    assert "drained" in capsys.readouterr().out


def test_unreadable_metrics_fail_at_once_saying_so(monkeypatch, capsys):
    code, calls = drain(monkeypatch, [-1])  # one reading only: a second would find the list empty
    assert code == 1 and "DeregisterEndpoint" in calls
    assert "cannot read http://127.0.0.1:1/metrics" in capsys.readouterr().err
