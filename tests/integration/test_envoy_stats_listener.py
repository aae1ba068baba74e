"""The compose stack's Envoy serves /stats/prometheus on a listener Prometheus in another
container can reach, and nothing else of the admin API (which stays on 127.0.0.1)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from services.devtools.certs import make_certs
from services.envoy.render import EnvoyCerts, EnvoySpec, write_envoy_config
from tests.helpers.envoy import free_port, start_envoy


def _request(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_stats_listener_serves_prometheus_stats_only(tmp_path: Path):
    certs = make_certs(tmp_path / "certs", agents=[], services=[])
    admin, stats = free_port(), free_port()
    spec = EnvoySpec(
        listen_host="127.0.0.1",
        listen_port=0,
        admin_port=admin,
        stats_port=stats,
        certs=EnvoyCerts(ca=certs.ca_cert, cert=certs.envoy.cert, key=certs.envoy.key),
        upstreams={"registry": [("127.0.0.1", free_port())]},
        routes=(("/harness.registry.v1.Registry/", "registry"),),
    )
    envoy = start_envoy(write_envoy_config(spec, tmp_path / "envoy.yaml"))
    try:
        base = f"http://127.0.0.1:{stats}"
        status, body = _request(base + "/stats/prometheus")
        assert status == 200 and "envoy_server_days_until_first_cert_expiring" in body
        assert _request(base + "/runtime_modify?x=1", "POST")[0] == 404
        assert _request(base + "/clusters")[0] == 404
        assert _request(base + "/stats")[0] == 404
    finally:
        envoy.stop()
