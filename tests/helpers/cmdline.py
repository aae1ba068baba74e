"""Is a command line accepted by the program it starts? Runs the program's own argument parser.

`accepts(module, args)` runs `python -m <module> <args>` in a subprocess whose argparse stops the
program right after the first successful `parse_args` (or exits 2 with argparse's own message),
so nothing starts: no port opens, no database is touched. It returns what that parser printed
as `--help` too, so a caller can insist that every flag it uses is documented there (a
suppressed or private flag is not part of the interface).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PROBE = r"""
import argparse, runpy, sys
_orig = argparse.ArgumentParser.parse_args
def _parse_and_stop(self, args=None, namespace=None):
    ns = _orig(self, args, namespace)
    sys.stdout.write("\n@@HELP@@\n" + self.format_help() + "\n@@ACCEPTED@@\n")
    sys.stdout.flush()
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = _parse_and_stop
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    help: str  # the parser's --help text ("" when not accepted)
    output: str  # everything the run printed (argparse's error when refused)

    def flags(self) -> set[str]:
        """Long options the --help text lists."""
        return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", self.help))


def accepts(module: str, args: list[str], env: dict[str, str] | None = None) -> Verdict:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
            **(env or {}),
        },
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or "@@ACCEPTED@@" not in proc.stdout:
        return Verdict(False, "", out)
    help_text = proc.stdout.split("@@HELP@@", 1)[1].split("@@ACCEPTED@@", 1)[0]
    return Verdict(True, help_text, out)


def _path() -> str:
    """This checkout first, then the caller's path (e.g. freshly generated stubs)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))


def flags_used(args: list[str]) -> list[str]:
    """`--flag` names in an argv (`--flag=value` and `--flag value` alike)."""
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]
