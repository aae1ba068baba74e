"""Child processes of the local stack: start, watch, and stop them all (no orphans)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    restarts: int = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # the child keeps its own copy of the fd
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,  # own process group: Ctrl-C in the terminal reaches only us
        )
        log.close()

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Supervisor:
    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, child: Child) -> Child:
        child.start()
        self.children.append(child)
        return child

    def check(self) -> None:
        for c in self.children:
            code = c.exited()
            if code is not None:
                raise RuntimeError(f"{c.name} exited with code {code}; last log lines:\n{c.log_tail()}")

    def restart_exited(self, max_restarts: int = 5) -> list[str]:
        """Once the stack is up, a child that dies is started again (state lives in its files:
        databases, outboxes); one that keeps dying stops the stack with its log tail."""
        restarted = []
        for c in self.children:
            code = c.exited()
            if code is None:
                continue
            if c.restarts >= max_restarts:
                raise RuntimeError(
                    f"{c.name} exited with code {code} after {c.restarts} restarts; last log lines:\n{c.log_tail()}"
                )
            c.restarts += 1
            c.start()
            restarted.append(f"{c.name} exited with code {code}; restarted ({c.restarts}/{max_restarts})")
        return restarted

    def stop_all(self, grace_s: float = 8.0) -> None:
        """SIGTERM everything (reverse start order), then SIGKILL what is left after the grace."""
        for c in reversed(self.children):
            if c.proc and c.proc.poll() is None:
                _signal_group(c.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in reversed(self.children):
            if c.proc is None:
                continue
            try:
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(c.proc, signal.SIGKILL)
                c.proc.wait(timeout=5)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
