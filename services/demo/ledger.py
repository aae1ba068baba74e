"""The demo's ledger tool: a small HTTP JSON service that agents call through the router.

`python -m services.demo.ledger --port 18080`. The router POSTs a call's arguments (a JSON
object) to `<endpoint>/<action>`; the answer is a JSON object. Actions of the demo's `ledger`
tool (compose/demo.yaml): `read` the entries of a ledger, `write` (append) one entry, `delete`
every entry of a ledger (the demo requires an approval for it). Entries live in memory.
Bad input is a 400 with a message; bodies, entries and ledgers are bounded.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("harness.demo.ledger")

MAX_BODY_BYTES = 64 * 1024
MAX_LEDGERS = 100
MAX_ENTRIES_PER_LEDGER = 1000
MAX_TEXT = 200


class BadCall(Exception):
    """The call's arguments are wrong; the message says how (answered with 400)."""


def _text(args: dict[str, Any], name: str, required: bool = True) -> str:
    value = args.get(name, "")
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > MAX_TEXT:
        raise BadCall(f"{name!r} must be a string of 1..{MAX_TEXT} characters")
    return value


@dataclass
class Ledgers:
    """The books, keyed by ledger name (e.g. FY2024); one lock, calls are tiny."""

    entries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        ledger = _text(args, "ledger")
        with self.lock:
            if action == "read":
                rows = self.entries.get(ledger, [])
                return {"ledger": ledger, "entries": list(rows), "count": len(rows)}
            if action == "write":
                return self._write(ledger, args)
            if action == "delete":
                removed = len(self.entries.pop(ledger, []))
                return {"ledger": ledger, "deleted": removed, "reason": _text(args, "reason", required=False)}
        raise BadCall(f"unknown action {action!r}: the ledger answers read, write and delete")

    def _write(self, ledger: str, args: dict[str, Any]) -> dict[str, Any]:
        amount = args.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int | float) or abs(amount) > 1e12:
            raise BadCall("'amount' must be a number (at most 1e12 in size)")
        if ledger not in self.entries and len(self.entries) >= MAX_LEDGERS:
            raise BadCall(f"the demo ledger holds at most {MAX_LEDGERS} ledgers")
        rows = self.entries.setdefault(ledger, [])
        if len(rows) >= MAX_ENTRIES_PER_LEDGER:
            raise BadCall(f"ledger {ledger!r} is full ({MAX_ENTRIES_PER_LEDGER} entries); delete it first")
        entry = {"id": len(rows) + 1, "account": _text(args, "account"), "amount": amount,
                 "memo": _text(args, "memo", required=False)}  # fmt: skip
        rows.append(entry)
        return {"ledger": ledger, "entry": entry}


def handler_for(ledgers: Ledgers, prefix: str = "/ledger") -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            base, _, action = self.path.rstrip("/").rpartition("/")
            if base != prefix:
                return self._answer(
                    404, {"error": f"no tool at {self.path}; the ledger is at {prefix}/<action>"}
                )
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY_BYTES:
                return self._answer(413, {"error": f"the body must be at most {MAX_BODY_BYTES} bytes"})
            try:
                args = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(args, dict):
                    raise BadCall("the arguments must be a JSON object")
                return self._answer(200, ledgers.call(action, args))
            except json.JSONDecodeError:
                return self._answer(400, {"error": "the body is not JSON"})
            except BadCall as exc:
                return self._answer(400, {"error": str(exc)})

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args) -> None:
            log.info("%s %s", self.address_string(), fmt % args)

    return Handler


def serve(host: str, port: int) -> ThreadingHTTPServer:
    """A started server (in a daemon thread); `.server_port` is the bound port."""
    server = ThreadingHTTPServer((host, port), handler_for(Ledgers()))
    threading.Thread(target=server.serve_forever, name="ledger-http", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.demo.ledger", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18080)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = serve(args.host, args.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("demo ledger tool on http://%s:%d/ledger", args.host, server.server_port)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
