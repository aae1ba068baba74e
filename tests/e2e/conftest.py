"""Starts the whole local stack once (`harness up --free-ports`) for the end-to-end tests."""

from __future__ import annotations

import pytest

from tests.conftest import REDIS_URL, redis_reachable
from tests.e2e.stack import RunningStack, launch, shutdown


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> RunningStack:
    # Both routers share Redis when it is there (the budget test needs it and says so).
    redis = REDIS_URL if redis_reachable() else ""
    running = launch(tmp_path_factory.mktemp("stack") / ".harness", time_scale=10, redis_url=redis)
    yield running
    shutdown(running)


def pytest_collection_modifyitems(session, config, items) -> None:
    """Tests that stop the shared stack run after every other test of the session, whatever their
    file is named (a test file sorting after theirs would otherwise meet a dead stack)."""
    stopping = [item for item in items if item.get_closest_marker("stops_stack")]
    for item in stopping:
        items.remove(item)
    items.extend(stopping)
