"""The command line of a checked-in rendering (the compose and Kubernetes Envoy configs): print
it, write it, or check that the file in the tree still equals it (a test and CI use `--check`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def generated_config_main(prog: str, description: str, text: str, argv: Sequence[str] | None) -> int:
    """The CLI of a checked-in rendering: print it, write it (`--out`) or check it (`--check`)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--out", type=Path, help="write here instead of stdout")
    p.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE differs from the rendering")
    args = p.parse_args(argv)
    if args.check:
        if not args.check.exists() or args.check.read_text() != text:
            print(f"{args.check} is stale; regenerate with --out {args.check}", file=sys.stderr)
            return 1
        return 0
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
