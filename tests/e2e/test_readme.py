"""The README, run as a new user would: every shell block of "Calling it", "Operating it",
"Onboard your own agent" and "Monitoring", in order, in one shell, against a fresh stack of its own."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.e2e.stack import REPO, launch, shutdown

pytestmark = pytest.mark.e2e
SECTIONS = ("Calling it", "Operating it", "Onboard your own agent", "Monitoring")


def readme_blocks(text: str, sections: tuple[str, ...] = SECTIONS) -> dict[str, list[str]]:
    """section title -> its ```bash blocks, in order."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    found = {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}
    return {s: re.findall(r"^```bash\n(.*?)^```", found.get(s, ""), flags=re.M | re.S) for s in sections}


def test_readme_blocks_are_found():
    blocks = readme_blocks((REPO / "README.md").read_text())
    assert all(blocks[s] for s in SECTIONS), {s: len(b) for s, b in blocks.items()}
    every = "\n".join(b for bs in blocks.values() for b in bs)
    assert "source .harness/env" in every and "<" + "id>" not in every


@pytest.fixture(scope="module")
def readme_stack(tmp_path_factory):
    """A stack of its own (the README changes state) whose root is `.harness` of a scratch
    directory, so the README's relative paths work there."""
    work = tmp_path_factory.mktemp("readme")
    running = launch(work / ".harness", time_scale=10)
    yield work, running
    shutdown(running)


def test_every_readme_command_runs_as_printed(readme_stack):
    work, _ = readme_stack
    blocks = readme_blocks((REPO / "README.md").read_text())
    script = "\n".join(
        f"echo '### README: {section}, block {i + 1}'\n{block}"
        for section in SECTIONS
        for i, block in enumerate(blocks[section])
    )
    prologue = "set -e\ntrap 'echo \"README command failed (exit $?): $BASH_COMMAND\" >&2' ERR\n"
    # A fresh terminal: no HARNESS_* settings; PATH without the virtualenv (`source` adds it).
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env["PYTHONPATH"] = str(REPO)  # this checkout's code, as `make run` would use it
    out = subprocess.run(
        ["bash", "-c", prologue + script], cwd=work, env=env, capture_output=True, text=True, timeout=420
    )
    assert out.returncode == 0, (
        f"stdout:\n{out.stdout[:3000]}\n...\n{out.stdout[-4000:]}\nstderr:\n{out.stderr[-4000:]}"
    )
    for section in SECTIONS:
        assert f"### README: {section}, block 1" in out.stdout
    assert '"deleted"' in out.stdout  # the approved delete reached the demo ledger
    assert "by:carol" in out.stdout  # and the lineage tells who decided
    assert re.search(r"^allowed: (user:)?dave invoke agent:invoice-bot in invoices$", out.stdout, re.M)
