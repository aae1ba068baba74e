"""The local stack's supervisor restarts a child that dies, up to a limit."""

from __future__ import annotations

import sys
import time

import pytest

from services.stack.procs import Child, Supervisor


def test_a_dead_child_is_restarted_then_given_up_on(tmp_path):
    sup = Supervisor()
    child = sup.start(
        Child("flaky", [sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "flaky.log")
    )
    child.proc.wait(timeout=10)
    assert sup.restart_exited(max_restarts=2) == ["flaky exited with code 3; restarted (1/2)"]
    child.proc.wait(timeout=10)
    assert sup.restart_exited(max_restarts=2) == ["flaky exited with code 3; restarted (2/2)"]
    child.proc.wait(timeout=10)
    with pytest.raises(RuntimeError, match="flaky exited with code 3 after 2 restarts"):
        sup.restart_exited(max_restarts=2)


def test_a_running_child_is_left_alone(tmp_path):
    sup = Supervisor()
    sup.start(Child("sleeper", [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "s.log"))
    time.sleep(0.1)
    assert sup.restart_exited() == []
    sup.stop_all(grace_s=2)
