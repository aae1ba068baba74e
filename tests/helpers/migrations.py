"""What the migration tests of every service check a database with."""

from __future__ import annotations

from types import ModuleType

from sqlalchemy import Engine, inspect


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def schema(engine: Engine, names: set[str]) -> dict:
    """What reflection sees of the tables: columns, primary key, uniques, indexes."""
    insp = inspect(engine)
    return {
        t: (
            [(c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in insp.get_columns(t)],
            insp.get_pk_constraint(t)["constrained_columns"],
            sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t)),
            sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)),
        )
        for t in sorted(names)
    }


def at_head_and_in_sync(engine: Engine, *migrates: ModuleType) -> None:
    for m in migrates:
        assert m.current(engine) == m.head(), m.__name__
        assert m.diff(engine) == [], m.__name__  # the other services' tables are not "removed"


def check_ops_command_line(migrate: ModuleType, db_url: str, capsys) -> None:
    """`python -m services.<svc>.migrate`: upgrade, current, check, downgrade, as printed."""
    import pytest

    main, head = migrate.main, migrate.head()
    main(["--db-url", db_url, "upgrade"])
    assert capsys.readouterr().out.strip() == f"{head} (head {head})"
    main(["--db-url", db_url, "current"])
    assert capsys.readouterr().out.strip() == f"{head} (head {head})"
    with pytest.raises(SystemExit) as done:
        main(["--db-url", db_url, "check"])
    assert done.value.code == 0 and "in sync" in capsys.readouterr().out
    main(["--db-url", db_url, "downgrade"])
    assert capsys.readouterr().out.strip() == f"(empty) (head {head})"


def start_together(opener: str, argvs: list[list[str]], cwd, within_s: float = 30.0) -> list[str]:
    """Runs `python -c opener *argv` once per argv and releases them all at one moment; returns the
    failures' stderr. The opener prints a line once its imports are done, then reads its stdin to
    the end: every process's stdin is one pipe, which closes once all have printed (``within_s``
    at most), however long their imports took."""
    import os
    import subprocess
    import sys

    go_read, go_write = os.pipe()
    command = [sys.executable, "-c", opener]
    pipes = {"stdin": go_read, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    try:
        procs = [subprocess.Popen([*command, *argv], cwd=cwd, **pipes) for argv in argvs]
    finally:
        os.close(go_read)
    try:
        _await_lines(procs, within_s)
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise
    finally:
        os.close(go_write)  # every waiting process reads end of file at once
    failures = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        if proc.returncode:
            failures.append(err.decode()[-2000:])
    return failures


def _await_lines(procs, within_s: float) -> None:
    """Until each process has printed a line or ended (an import failed: its exit status says so)."""
    import selectors
    import time

    deadline = time.monotonic() + within_s
    with selectors.DefaultSelector() as waiting:
        for proc in procs:
            waiting.register(proc.stdout, selectors.EVENT_READ)
        while waiting.get_map():
            left = deadline - time.monotonic()
            assert left > 0, (
                f"{len(waiting.get_map())} of {len(procs)} processes not ready within {within_s} s"
            )
            for key, _ in waiting.select(left):
                key.fileobj.readline()
                waiting.unregister(key.fileobj)
