"""Starts the whole local stack once (`harness up --free-ports`) for the end-to-end tests."""

from __future__ import annotations

import pytest

from tests.e2e.stack import RunningStack, launch, shutdown


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> RunningStack:
    running = launch(tmp_path_factory.mktemp("stack") / ".harness", time_scale=10)
    yield running
    shutdown(running)
