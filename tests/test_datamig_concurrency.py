"""Several runners at once, and a runner killed mid-migration: real processes, real lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from deploytools.datamig import ledger
from deploytools.datamig.lock import LOCK_KEY, lock_file_path

RUNNER = [sys.executable, "-m", "deploytools.datamig"]


def runner_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}


def ledger_args(kind: str, request, tmp_path: Path) -> tuple[list[str], ledger.LedgerDatabase]:
    if kind == "postgresql":
        url = request.getfixturevalue("pg_url")
        return ["--database-url", url], ledger.ledger_database(url, None)
    root = tmp_path / "root"
    (root / "shared").mkdir(parents=True)
    return ["--root", str(root)], ledger.ledger_database(None, root)


def query(database: ledger.LedgerDatabase, sql: str) -> list[tuple]:
    engine = ledger.create_engine(database)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def create_marks(database: ledger.LedgerDatabase) -> None:
    engine = ledger.create_engine(database)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE marks (version VARCHAR(14), pid INTEGER)"))
    engine.dispose()


MARKING = """\
import os
from sqlalchemy import text

def run(ctx):
    insert = text("INSERT INTO marks (version, pid) VALUES (:v, :p)")
    ctx.db.execute(insert, {"v": ctx.version, "p": os.getpid()})
"""


@pytest.mark.parametrize(
    ("kind", "runners", "migrations"), [("postgresql", 8, 30), ("sqlite", 4, 10)]
)
def test_concurrent_runners_apply_each_migration_exactly_once(
    kind, runners, migrations, request, tmp_path
):
    args, database = ledger_args(kind, request, tmp_path)
    create_marks(database)  # the application's table; the ledger tables do not exist yet
    folder = tmp_path / "release" / "migrations"
    folder.mkdir(parents=True)
    versions = [f"2020010100{index:02d}" for index in range(migrations)]
    for version in versions:
        (folder / f"{version}_mark.py").write_text(MARKING)

    processes = [
        subprocess.Popen(
            [*RUNNER, "apply", "--json", "--lock-timeout", "60", *args],
            cwd=folder.parent,
            env=runner_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(runners)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]

    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    results = [json.loads(stdout) for stdout, _ in outputs]
    applied = sorted(done["version"] for result in results for done in result["applied"])
    assert applied == versions  # each applied by exactly one runner
    assert all(result["failed"] is None for result in results)
    marks = query(database, "SELECT version, COUNT(*) FROM marks GROUP BY version")
    assert sorted(marks) == [(version, 1) for version in versions]
    attempts = query(
        database,
        "SELECT version, status, COUNT(*) FROM data_migration_attempts GROUP BY version, status",
    )
    assert sorted(attempts) == [(version, "applied", 1) for version in versions]
    assert len(query(database, "SELECT version FROM data_migrations")) == migrations


SLEEPER = """\
import time
from pathlib import Path
from sqlalchemy import text

MARKER = Path({marker!r})

def run(ctx):
    ctx.db.execute(text("INSERT INTO marks (version, pid) VALUES (:v, 0)"), {{"v": ctx.version}})
    if not MARKER.exists():  # only the first run hangs, and tells the test it is inside
        MARKER.write_text("inside")
        time.sleep(120)
"""


def lock_is_free(kind: str, database: ledger.LedgerDatabase) -> bool:
    if kind == "sqlite":
        import fcntl

        with open(lock_file_path(database), "a") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(file, fcntl.LOCK_UN)
            return True
    engine = ledger.create_engine(database)
    try:
        with engine.connect() as conn:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar()
            if got:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            return bool(got)
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_a_runner_killed_inside_a_migration_leaves_no_trace(kind, request, tmp_path):
    args, database = ledger_args(kind, request, tmp_path)
    create_marks(database)
    folder = tmp_path / "release" / "migrations"
    folder.mkdir(parents=True)
    marker = tmp_path / "inside"
    (folder / "202001010000_first.py").write_text(MARKING)
    (folder / "202001010001_sleeper.py").write_text(
        textwrap.dedent(SLEEPER.format(marker=str(marker)))
    )

    victim = subprocess.Popen(
        [*RUNNER, "apply", "--json", *args],
        cwd=folder.parent,
        env=runner_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert victim.poll() is None, "the runner ended before reaching the migration"
        assert time.monotonic() < deadline, "the runner never got inside the migration"
        time.sleep(0.02)
    # Inside the sleeper: its INSERT is done but not committed, and the lock is held.
    assert not lock_is_free(kind, database)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)

    killed_at = time.monotonic()
    while not lock_is_free(kind, database):
        assert time.monotonic() - killed_at < 1.0, "the lock outlived the killed runner"
        time.sleep(0.01)
    assert sorted(query(database, "SELECT version FROM data_migrations")) == [("202001010000",)]
    assert sorted(query(database, "SELECT version FROM marks")) == [("202001010000",)]
    # The killed run left its attempt "running" with no runner alive: status says interrupted.
    status = subprocess.run(
        [*RUNNER, "status", "--json", *args],
        cwd=folder.parent,
        env=runner_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    states = {m["version"]: m["state"] for m in json.loads(status.stdout)["migrations"]}
    assert states == {"202001010000": "applied", "202001010001": "interrupted"}

    answer = subprocess.run(
        [*RUNNER, "apply", "--json", "--lock-timeout", "5", *args],
        cwd=folder.parent,
        env=runner_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0, answer.stderr
    assert [d["version"] for d in json.loads(answer.stdout)["applied"]] == ["202001010001"]
    assert sorted(query(database, "SELECT version FROM marks")) == [
        ("202001010000",),
        ("202001010001",),
    ]
    assert sorted(
        query(
            database,
            "SELECT status, COUNT(*) FROM data_migration_attempts "
            "WHERE version = '202001010001' GROUP BY status",
        )
    ) == [("applied", 1), ("interrupted", 1)]
