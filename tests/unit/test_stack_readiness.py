"""`harness up` reports healthy only once every router holds the seeds: the registry revision the
seeding reached (through its Watch) and budgets asked for since they were seeded (its poll)."""

from __future__ import annotations

import http.server
import threading
import time
from types import SimpleNamespace

import pytest

from services.stack.layout import StackPorts
from services.stack.readiness import StackError, StartupChecks


class Pages:
    """/metrics pages served on port 0, changed by the test while the stack waits."""

    def __init__(self, count: int) -> None:
        self.bodies = [""] * count
        pages = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.bodies[self.server.index].encode()  # type: ignore[attr-defined]
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.servers = []
        for i in range(count):
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            server.index = i  # type: ignore[attr-defined]
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)

    def port(self, i: int) -> int:
        return self.servers[i].server_address[1]

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


def router_page(revision: int, budgets_as_of: float) -> str:
    return (
        f"harness_registry_mirror_revision {revision}\n"
        f"harness_router_budgets_as_of_timestamp_seconds {budgets_as_of}\n"
    )


@pytest.fixture
def pages():
    p = Pages(3)  # the registry, router-1, router-2
    yield p
    p.close()


def checks(pages: Pages, timeout_s: float = 30.0) -> StartupChecks:
    stack = StartupChecks()
    ports = StackPorts(registry_metrics=pages.port(0), router_metrics=(pages.port(1), pages.port(2)))
    stack.cfg = SimpleNamespace(ports=ports, timeout_s=timeout_s)  # type: ignore[attr-defined]
    stack.sup = SimpleNamespace(check=lambda: None)  # type: ignore[attr-defined]
    stack.paths = SimpleNamespace(logs="logs")  # type: ignore[attr-defined]
    return stack


async def test_healthy_waits_for_the_router_that_is_behind(pages):
    seeded_at = time.time()
    pages.bodies[0] = "harness_registry_revision 42\n"
    pages.bodies[1] = router_page(42, seeded_at + 0.1)
    pages.bodies[2] = router_page(41, seeded_at + 0.1)  # its Watch has not brought the last change
    stack = checks(pages)
    caught_up = threading.Timer(0.5, lambda: pages.bodies.__setitem__(2, router_page(42, seeded_at + 0.6)))
    caught_up.start()
    t0 = time.monotonic()
    await stack._routers_hold_the_seeds(seeded_at, time.monotonic() + 30)
    assert time.monotonic() - t0 >= 0.4  # it waited for router-2, not just for the pages to answer
    caught_up.cancel()


async def test_a_router_without_fresh_budgets_is_named_when_the_deadline_passes(pages):
    seeded_at = time.time()
    pages.bodies[0] = "harness_registry_revision 7\n"
    pages.bodies[1] = router_page(7, seeded_at - 5)  # asked for budgets before they were seeded
    pages.bodies[2] = router_page(7, seeded_at + 1)
    with pytest.raises(StackError, match="router-1 holding the seeds"):
        await checks(pages, timeout_s=1.0)._routers_hold_the_seeds(seeded_at, time.monotonic() + 1.0)
