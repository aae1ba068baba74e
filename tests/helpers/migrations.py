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


def start_together(opener: str, argvs: list[list[str]], cwd) -> list[str]:
    """Runs `python -c opener *argv` once per argv, all released at the same moment (the opener
    sleeps until the start time passed as its last argument); returns the failures' stderr."""
    import subprocess
    import sys
    import time

    start = str(time.time() + 4)  # ~1 s of imports, with room to spare
    procs = [
        subprocess.Popen([sys.executable, "-c", opener, *argv, start], cwd=cwd, stderr=subprocess.PIPE)
        for argv in argvs
    ]
    failures = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        if proc.returncode:
            failures.append(err.decode()[-2000:])
    return failures
