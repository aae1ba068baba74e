"""Metrics hygiene on the live stack: traffic from many users with distinct prompts adds no
series (no user names, request ids or raw input in label values), counters are typed as
counters, and units are in the names."""

from __future__ import annotations

import asyncio
import secrets
import urllib.request

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.common.identity import mint_jwt
from tests.e2e.calls import bearer, generate
from tests.e2e.promql import prometheus_url
from tests.e2e.traffic import agent_channel

pytestmark = pytest.mark.e2e
USERS_PER_ROUND = 25
# Triton's own names (nv_*: untyped counters, microseconds) are kept as Triton spells them.
FOREIGN_PREFIXES = ("nv_",)
BAD_UNIT_SUFFIXES = ("_ms", "_milliseconds", "_us", "_microseconds", "_kb", "_mb", "_percent")


def metrics_urls(stack) -> list[str]:
    """Every service's /metrics: the targets harness up gave Prometheus, less Envoy's."""
    prometheus_url(stack)  # its config lists them; fails under CI=true when Prometheus is missing
    config = yaml.safe_load((stack.root / "prometheus.yml").read_text())
    return [
        f"http://{target}{job['metrics_path']}"
        for job in config["scrape_configs"]
        if job["job_name"] != "envoy"
        for static in job["static_configs"]
        for target in static["targets"]
    ]


def scrape_all(urls: list[str]) -> dict[str, set[tuple]]:
    """family name -> {(sample name, sorted labels)} over every service."""
    series: dict[str, set[tuple]] = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                series.setdefault(family.name, set()).add((url, s.name, tuple(sorted(s.labels.items()))))
    return series


async def many_users(stack, tag: str) -> tuple[list[str], list[str]]:
    """One request per new user with a unique prompt; half carry the admin role (served), half
    none (refused by policy). Returns (user names, prompt markers)."""
    private = (stack.root / "certs" / "jwt-signing.key").read_bytes()
    users = [f"user-{tag}-{i}-{secrets.token_hex(3)}" for i in range(USERS_PER_ROUND)]
    markers = [f"marker{secrets.token_hex(6)}" for _ in users]

    async def one(ch, user: str, marker: str, admin: bool) -> None:
        token = mint_jwt(private, user, roles=("admin",) if admin else ())
        try:
            await generate(ch, bearer(token), prompt=f"Summarise {marker} for {user}", max_tokens=4)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc

    async with agent_channel(stack, "demo-agent") as ch:
        await asyncio.gather(
            *(one(ch, u, m, i % 2 == 0) for i, (u, m) in enumerate(zip(users, markers, strict=True)))
        )
    return users, markers


def test_many_users_add_no_series_and_leave_no_trace_in_labels(stack):
    urls = metrics_urls(stack)
    asyncio.run(many_users(stack, "warmup"))  # every outcome and label set seen once
    before = scrape_all(urls)
    users, markers = asyncio.run(many_users(stack, "round"))
    after = scrape_all(urls)

    grown = {
        name: len(after.get(name, ())) - len(before.get(name, ()))
        for name in after
        if not name.startswith("envoy") and len(after[name]) != len(before.get(name, ()))
    }
    assert grown == {}, f"series added by {USERS_PER_ROUND} new users: {grown}"
    label_values = {v for family in after.values() for _, _, labels in family for _, v in labels}
    leaked = {v for v in label_values for needle in (*users, *markers) if needle in v}
    assert leaked == set()
    harness = sum(len(s) for name, s in after.items() if name.startswith("harness_"))
    assert harness < 3000, f"{harness} harness_* series on a three-agent demo stack"


def test_counters_are_typed_as_counters_and_units_are_in_the_names(stack):
    for url in metrics_urls(stack):
        with urllib.request.urlopen(url, timeout=10) as r:
            families = list(text_string_to_metric_families(r.read().decode()))
        for family in families:
            if family.name.startswith(FOREIGN_PREFIXES):
                continue
            assert not family.name.endswith(BAD_UNIT_SUFFIXES), f"{url}: {family.name}: use base units"
            if family.type == "counter":
                assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
            else:
                assert not family.name.endswith("_total"), f"{url}: {family.name} is a {family.type}"
            if family.type == "histogram" and "bucket" not in family.name:
                assert family.name.endswith(("_seconds", "_bytes", "_tokens")), f"{url}: {family.name} unit"
