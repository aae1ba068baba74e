"""`harness top`'s arithmetic on scraped metrics, and its refusals of bad input."""

from __future__ import annotations

import pytest

from services.cli.main import main
from services.cli.top_data import AgentStats, Scrape, merge, quantile

INF = float("inf")


def k(name: str, **labels: str):
    return (name, tuple(sorted(labels.items())))


def test_quantile_interpolates_like_prometheus():
    buckets = {0.1: 0.0, 0.5: 0.0, 1.0: 100.0, INF: 100.0}
    assert quantile(0.99, buckets) == pytest.approx(0.995)
    assert quantile(0.5, {0.1: 50.0, 1.0: 100.0, INF: 100.0}) == pytest.approx(0.1)
    assert quantile(0.99, {0.1: 0.0, INF: 10.0}) == 0.1  # in +Inf: the largest finite bound
    assert quantile(0.5, {0.1: 0.0, INF: 0.0}) is None


def test_merge_adds_counters_and_keeps_one_copy_of_a_gauge():
    target = k("harness_router_agent_ttft_target_seconds", agent="a", slo_class="batch")
    total = k("harness_router_requests_total", agent="a", outcome="OK", frontdoor="grpc")
    fleet = merge([{target: 0.5, total: 3.0}, {target: 0.5, total: 4.0}])
    assert fleet == {target: 0.5, total: 7.0}


def _page(ok: float, failed: float, fast: float, slow: float, tokens: float, usd: float) -> dict:
    ttft = "harness_router_ttft_seconds_bucket"
    return {
        k("harness_router_requests_total", agent="a", outcome="OK", frontdoor="grpc"): ok,
        k("harness_router_requests_total", agent="a", outcome="UNAVAILABLE", frontdoor="grpc"): failed,
        k(ttft, agent="a", model="m", slo_class="batch", le="0.1"): fast,
        k(ttft, agent="a", model="m", slo_class="batch", le="1.0"): fast + slow,
        k(ttft, agent="a", model="m", slo_class="batch", le="+Inf"): fast + slow,
        k("harness_router_tokens_total", agent="a", model="m", direction="output"): tokens,
        k("harness_cost_usd_total", team="t", project="p", agent="a", model="m"): usd,
        k("harness_router_agent_ttft_target_seconds", agent="a", slo_class="batch"): 2.0,
    }


def test_rates_and_latency_cover_the_window_while_the_agent_has_traffic():
    stats = AgentStats()
    stats.add(Scrape(100.0, _page(ok=90, failed=10, fast=100, slow=0, tokens=1000, usd=1.0)))
    stats.add(Scrape(110.0, _page(ok=110, failed=10, fast=100, slow=20, tokens=1500, usd=1.5)))
    (row,) = stats.rows()
    assert (row.agent, row.slo_class, row.ttft_target_s) == ("a", "batch", 2.0)
    assert row.rps == pytest.approx(2.0) and row.tokens_per_s == pytest.approx(50.0)
    assert row.usd_per_hour == pytest.approx(0.5 / 10 * 3600)
    assert row.error_share == 0.0  # the window's 20 requests all succeeded
    assert row.ttft_p50_s == pytest.approx(0.55)  # only the window's (slow) observations
    assert not row.over_target


def test_an_idle_agent_shows_latency_and_errors_since_start():
    stats = AgentStats()
    page = _page(ok=90, failed=10, fast=100, slow=0, tokens=1000, usd=1.0)
    stats.add(Scrape(100.0, page))
    stats.add(Scrape(110.0, page))
    (row,) = stats.rows()
    assert row.rps == 0 and row.tokens_per_s == 0 and row.usd_per_hour == 0
    assert row.error_share == pytest.approx(0.1)
    assert row.ttft_p99_s == pytest.approx(0.099)


def test_old_scrapes_leave_the_window():
    """The window starts at the newest scrape at least window_s old; older ones are dropped."""
    stats = AgentStats(window_s=60)
    for t in (0.0, 30.0, 61.0, 95.0):
        stats.add(Scrape(t, {}))
    assert [s.at for s in stats._history] == [30.0, 61.0, 95.0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "0"], "--interval must be 0.2 to 60 seconds"),
        (["--metrics", "http://127.0.0.1:1/metrics"] * 65, "at most 64"),
        (["--metrics", "file:///etc/passwd"], "use http:// or https://"),
        (["--width", "10"], "--width must be 40 to 1000 columns"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(tmp_path, capsys, argv, message):
    (tmp_path / "env").write_text("export HARNESS_ADDR='127.0.0.1:1'\n")
    assert main(["top", "--once", "--root", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_no_metrics_known_names_the_fix(tmp_path, capsys, monkeypatch):
    for name in ("HARNESS_ROUTER_METRICS", "HARNESS_COST_METRICS", "HARNESS_ROOT"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "env").write_text("export HARNESS_ADDR='127.0.0.1:1'\n")
    assert main(["top", "--once", "--root", str(tmp_path)]) == 2
    assert "run `harness up`" in capsys.readouterr().err


def test_endpoints_table_shows_unknown_kv_use_as_a_dash():
    from harness.pool.v1 import pool_pb2
    from rich.console import Console

    from services.cli.top_view import endpoints_table

    ready, healthy = pool_pb2.MODEL_STATE_READY, pool_pb2.ENDPOINT_HEALTH_HEALTHY
    tgi = pool_pb2.Endpoint(name="tgi", health=healthy)
    tgi.models.add(name="m", state=ready, kv_cache_unknown=True)
    vllm = pool_pb2.Endpoint(name="vllm", health=healthy)
    vllm.models.add(name="m", state=ready, kv_cache_fraction=0.42)
    console = Console(width=120, record=True)
    console.print(endpoints_table([tgi, vllm]))
    rows = {cols[0]: cols for cols in (line.split() for line in console.export_text().splitlines()) if cols}
    assert rows["tgi"][3] == "-" and rows["vllm"][3] == "42%"  # the KV column
