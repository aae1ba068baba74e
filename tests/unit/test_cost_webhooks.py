"""Budget webhooks may not target the cost service's own host or network: the policy (schemes,
hosts, networks), checked against every address a name resolves to; the POST connects only to a
checked address and never follows a redirect; delivery refuses a stored URL the policy refuses."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from harness.cost.v1 import cost_pb2

from services.cost.alert_delivery import AlertDelivery
from services.cost.config import AlertConfig
from services.cost.webhooks import WebhookPolicy, WebhookRefused, post_json
from tests.unit.test_cost_alerts import budget, open_store, spend

LOCAL = WebhookPolicy(schemes=("http",), allowed_networks=("127.0.0.0/8",))


def resolver(*addresses: str):
    def resolve(host, port, type=0):
        fam = socket.AF_INET6 if ":" in addresses[0] else socket.AF_INET
        return [(fam, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return resolve


class Receiver:
    """A local HTTP server: records POSTs; answers `status` (with a Location when 3xx)."""

    def __init__(self, status: int = 204, location: str = "") -> None:
        self.paths: list[str] = []
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                me.paths.append(self.path)
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://hooks.example.com/x", "scheme 'http' is not allowed"),
        ("ftp://hooks.example.com/x", "scheme 'ftp' is not allowed"),
        ("https:///x", "has no host"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://evil.example.org/x", "not in the allowed hosts"),
        ("https://" + "a" * 2100 + ".example.com/", "longer than 2048"),
    ],
)
def test_urls_refused_before_any_lookup(url, words):
    policy = WebhookPolicy(hosts=("hooks.example.com", "*.corp.example"))
    with pytest.raises(WebhookRefused, match=words):
        policy.target(url)


def test_allowed_hosts_and_subdomains():
    policy = WebhookPolicy(hosts=("hooks.example.com", "*.corp.example"))
    assert policy.target("https://HOOKS.example.com./a?b=1").path == "/a?b=1"
    assert policy.target("https://alerts.corp.example/").host == "alerts.corp.example"
    with pytest.raises(WebhookRefused):
        policy.target("https://corp.example.evil.org/")


@pytest.mark.parametrize(
    "addresses",
    [
        ("127.0.0.1",),
        ("10.1.2.3",),
        ("192.168.0.10",),
        ("172.16.5.5",),
        ("169.254.169.254",),  # cloud metadata
        ("0.0.0.0",),
        ("::1",),
        ("fe80::1",),
        ("fd00::1",),
        ("::ffff:127.0.0.1",),  # IPv4-mapped loopback
        ("93.184.216.34", "10.0.0.1"),  # one bad address among good ones is enough
    ],
)
def test_every_resolved_address_must_be_public(addresses):
    policy = WebhookPolicy()
    target = policy.target("https://hooks.example.com/x")
    with pytest.raises(WebhookRefused, match="private, loopback, link-local or reserved"):
        policy.addresses(target, resolver(*addresses))


def test_public_addresses_and_allowed_networks_pass():
    policy = WebhookPolicy(allowed_networks=("10.20.0.0/16",))
    target = policy.target("https://hooks.example.com/x")
    assert policy.addresses(target, resolver("93.184.216.34", "2606:2800:220:1::")) == [
        "93.184.216.34", "2606:2800:220:1::",
    ]  # fmt: skip
    assert policy.addresses(target, resolver("10.20.3.4")) == ["10.20.3.4"]
    with pytest.raises(WebhookRefused):
        policy.addresses(target, resolver("10.21.3.4"))


def test_a_name_that_does_not_resolve_is_refused():
    def fail(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    policy = WebhookPolicy()
    with pytest.raises(WebhookRefused, match="does not resolve"):
        policy.addresses(policy.target("https://nowhere.invalid/"), fail)


def test_bad_policy_config_is_refused():
    with pytest.raises(ValueError, match="schemes"):
        WebhookPolicy(schemes=("ftp",))
    with pytest.raises(ValueError, match="CIDR"):
        WebhookPolicy(allowed_networks=("ten",))


def test_post_to_loopback_is_refused_by_default_and_redirects_are_not_followed():
    hook, target = Receiver(), Receiver()
    redirect = Receiver(status=302, location=target.url)
    try:
        with pytest.raises(WebhookRefused, match=r"resolves to 127\.0\.0\.1"):
            post_json(hook.url, {"a": 1}, timeout_s=2, headers={}, policy=WebhookPolicy(schemes=("http",)))
        with pytest.raises(WebhookRefused, match=r"resolves to 127\.0\.0\.1"):
            post_json(hook.url.replace("127.0.0.1", "localhost"), {"a": 1}, timeout_s=2, headers={},
                      policy=WebhookPolicy(schemes=("http",)))  # fmt: skip
        assert hook.paths == []
        post_json(hook.url, {"a": 1}, timeout_s=2, headers={}, policy=LOCAL)
        assert hook.paths == ["/hook"]
        with pytest.raises(OSError, match=r"HTTP 302.*redirects are not followed"):
            post_json(redirect.url, {"a": 1}, timeout_s=2, headers={}, policy=LOCAL)
        assert redirect.paths == ["/hook"] and target.paths == []
    finally:
        for r in (hook, target, redirect):
            r.close()


async def test_delivery_refuses_a_stored_url_the_policy_refuses(tmp_path):
    """A budget written before the policy (or whose name now resolves inward) is not POSTed."""
    clock = {"now": 1_718_452_800_000_000}
    store = await open_store(f"sqlite:///{tmp_path / 'cost.db'}", clock)
    hook = Receiver()
    try:
        await store.set_budget(
            budget(limit_usd=1, percents=[100], webhook=hook.url)
        )  # the store does not vet
        assert len((await spend(store, 1)).alerts) == 1
        delivery = AlertDelivery(store, AlertConfig(webhooks=WebhookPolicy(schemes=("http",))))
        await delivery._webhook_step()
        (listed,) = await store.list_alerts()
        assert hook.paths == [] and listed.webhook.last_error.startswith("refused: ")
        assert "127.0.0.1" in listed.webhook.last_error and listed.webhook.attempts == 1
        assert listed.webhook.state == cost_pb2.WEBHOOK_STATE_FAILED  # for good: retrying cannot help
        assert store.alerts.due_webhooks(10) == []
    finally:
        hook.close()
        await store.close()
