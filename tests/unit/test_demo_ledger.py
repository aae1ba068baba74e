"""The demo's ledger tool over real HTTP (port 0), as the router calls it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from services.demo.ledger import MAX_BODY_BYTES, serve


@pytest.fixture
def ledger_url():
    server = serve("127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.server_port}/ledger"
    server.shutdown()
    server.server_close()


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_write_read_delete(ledger_url):
    assert post(f"{ledger_url}/read", {"ledger": "FY2024"}) == (
        200,
        {"ledger": "FY2024", "entries": [], "count": 0},
    )
    code, body = post(
        f"{ledger_url}/write", {"ledger": "FY2024", "account": "4000", "amount": 12.5, "memo": "x"}
    )
    assert code == 200 and body["entry"] == {"id": 1, "account": "4000", "amount": 12.5, "memo": "x"}
    assert post(f"{ledger_url}/read", {"ledger": "FY2024"})[1]["count"] == 1
    assert post(f"{ledger_url}/delete", {"ledger": "FY2024", "reason": "duplicate"})[1]["deleted"] == 1
    assert post(f"{ledger_url}/read", {"ledger": "FY2024"})[1]["count"] == 0


@pytest.mark.parametrize(
    ("path", "body", "code", "words"),
    [
        ("/write", {"ledger": "FY", "account": "1", "amount": "ten"}, 400, "'amount' must be a number"),
        ("/write", {"ledger": "FY", "amount": 1}, 400, "'account'"),
        ("/read", {}, 400, "'ledger'"),
        ("/read", {"ledger": "x" * 500}, 400, "1..200"),
        ("/read", b"[1, 2]", 400, "JSON object"),
        ("/read", b"{not json", 400, "not JSON"),
        ("/transfer", {"ledger": "FY"}, 400, "unknown action"),
        ("/../etc/read", {"ledger": "FY"}, 404, "no tool"),
        ("/read", b" " * (MAX_BODY_BYTES + 1), 413, "at most"),
    ],
)
def test_bad_calls_get_a_clear_4xx(ledger_url, path, body, code, words):
    got, answer = post(ledger_url + path, body)
    assert got == code and words in answer["error"]
