"""What a migration or the world can do to a runner, and what the ledger must say afterwards:
commits inside a migration, exits, signals, a client that went away, a killed runner, a
rollback to a release without the failed migration's file."""

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
import test_datamig_runner as base
from test_datamig_runner import clean_env, cli, create_calls, write

from deploytools.datamig import ledger, runner

backend = base.backend  # fixtures: PostgreSQL and SQLite ledgers, a release directory
release = base.release

RUNNER = [sys.executable, "-m", "deploytools.datamig"]


def attempts(backend) -> list[tuple]:
    return backend.query("SELECT version, status, error FROM data_migration_attempts ORDER BY id")


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "the runner ended before reaching the migration"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


# --------------------------------------------------------------------------- transactions


TRANSACTION_CONTROL = {
    "commit": "ctx.db.commit()",
    "rollback": "ctx.db.rollback()",
    "begin": "ctx.db.begin()",
    "close": "ctx.db.close()",
    "COMMIT as SQL": "ctx.db.execute(text('COMMIT'))",
    "END as SQL": "ctx.db.exec_driver_sql('end')",
}


@pytest.mark.parametrize("call", TRANSACTION_CONTROL)
def test_a_migration_cannot_end_its_transaction(call, backend, release):
    create_calls(backend)
    write(
        release / "migrations",
        "202001010000_commits.py",
        f"""
        from sqlalchemy import text

        def run(ctx):
            ctx.db.execute(text("INSERT INTO calls (version, seq) VALUES ('before', 0)"))
            {TRANSACTION_CONTROL[call]}
        """,
    )
    result = runner.apply(backend.settings(release / "migrations"))
    assert result.failed is not None
    assert result.failed.error.startswith("TransactionControlError: a migration must not")
    assert "its changes and its ledger row commit together; raise to fail" in result.failed.error
    assert backend.query("SELECT * FROM calls") == [], "the write before it was committed"
    assert backend.query("SELECT * FROM data_migrations") == []


def test_ctx_db_is_a_real_connection(backend, release):
    create_calls(backend)
    write(
        release / "migrations",
        "202001010000_uses_the_api.py",
        """
        from sqlalchemy import text
        from sqlalchemy.engine import Connection

        def run(ctx):
            assert isinstance(ctx.db, Connection)
            ctx.db.execute(text("INSERT INTO calls (version, seq) VALUES ('kept', 1)"))
            savepoint = ctx.db.begin_nested()  # savepoints stay allowed
            ctx.db.execute(text("INSERT INTO calls (version, seq) VALUES ('undone', 2)"))
            savepoint.rollback()
            rows = ctx.db.execution_options(yield_per=10).execute(text("SELECT * FROM calls"))
            assert [tuple(r) for r in rows] == [("kept", 1)]
        """,
    )
    result = runner.apply(backend.settings(release / "migrations"))
    assert result.ok, result.failed
    assert backend.query("SELECT version FROM calls") == [("kept",)]


# --------------------------------------------------------------------------- exits


EXITS = {
    "sys.exit(0)": ("import sys\n", "sys.exit(0)", "(sys.exit(0))"),
    "sys.exit(3)": ("import sys\n", "sys.exit(3)", "(sys.exit(3))"),
    "sys.exit()": ("import sys\n", "sys.exit()", "(sys.exit())"),
    "os._exit(3)": ("import os\n", "os._exit(3)", "(os._exit(3))"),
    "raise SystemExit('bye')": (
        "def leave():\n    raise SystemExit('bye')\n",
        "leave()",
        "(sys.exit('bye'))",
    ),
}


@pytest.mark.parametrize("case", EXITS)
def test_a_migration_that_exits_is_a_failed_attempt(case, backend, release):
    prelude, call, shown = EXITS[case]
    create_calls(backend)
    folder = release / "migrations"
    write(folder, "202001010000_exits.py", prelude + textwrap.dedent(base.insert_call("x", call)))
    write(folder, "202001010001_after.py", base.insert_call("after"))

    answer = cli("apply", "--json", *backend.cli_args(), cwd=release)

    assert answer.returncode == 1, answer.stderr
    data = json.loads(answer.stdout)
    assert data["exit_code"] == 1 and data["applied"] == []
    assert data["failed"]["error"] == f"the migration exited the process {shown}"
    assert "202001010000_exits" in data["error"]
    assert backend.query("SELECT * FROM calls") == [], "its write was not rolled back"
    [(version, status, error)] = attempts(backend)
    assert (version, status) == ("202001010000", "failed")
    assert error.startswith(f"the migration exited the process {shown}")


# --------------------------------------------------------------------------- signals


HANGS = """
import pathlib, time
from sqlalchemy import text

def run(ctx):
    ctx.db.execute(text("INSERT INTO calls (version, seq) VALUES ('half', 0)"))
    pathlib.Path({marker!r}).touch()
    {wait}
"""


@pytest.mark.parametrize(
    ("signum", "wait"),
    [
        (signal.SIGTERM, "time.sleep(120)"),
        (signal.SIGINT, "time.sleep(120)"),
        (signal.SIGTERM, "ctx.db.execute(text('SELECT pg_sleep(120)'))"),
        (
            signal.SIGTERM,
            "while True:\n        try:\n            time.sleep(120)\n"
            "        except Exception:\n            pass",
        ),
    ],
    ids=["SIGTERM-sleep", "SIGINT-sleep", "SIGTERM-in-a-query", "SIGTERM-swallowed"],
)
def test_a_signal_rolls_back_and_records_the_attempt(signum, wait, backend, release, tmp_path):
    if "pg_sleep" in wait and backend.kind == "sqlite":
        pytest.skip("pg_sleep is PostgreSQL's")
    create_calls(backend)
    marker = tmp_path / "inside"
    folder = release / "migrations"
    write(folder, "202001010000_first.py", base.insert_call("first"))
    write(folder, "202001010001_hangs.py", HANGS.format(marker=str(marker), wait=wait))
    write(folder, "202001010002_never.py", base.insert_call("never"))
    process = subprocess.Popen(
        [*RUNNER, "apply", "--json", *backend.cli_args()],
        cwd=release,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(marker, process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)

    name = signal.Signals(signum).name
    assert process.returncode == 1, stderr
    data = json.loads(stdout)
    assert [d["version"] for d in data["applied"]] == ["202001010000"]
    assert data["failed"]["error"] == f"interrupted by {name}"
    assert data["error"].startswith(f"interrupted by {name} while applying 202001010001_hangs")
    assert backend.query("SELECT version FROM calls") == [("first",)]
    recorded = attempts(backend)
    assert [(v, s) for v, s, _ in recorded] == [
        ("202001010000", "applied"),
        ("202001010001", "failed"),
    ]
    assert recorded[1][2].startswith(f"interrupted by {name}")
    states = {m.version: m.state for m in runner.status(backend.settings(folder)).migrations}
    assert states == {
        "202001010000": "applied",
        "202001010001": "failed",
        "202001010002": "pending",
    }


# --------------------------------------------------------------------------- lost client


GOES_ON = """
import pathlib, sys, time
from sqlalchemy import text

def run(ctx):
    pathlib.Path({marker!r}).touch()
    go = pathlib.Path({go!r})
    while not go.exists():
        time.sleep(0.02)
    for n in range(2000):  # far more than a pipe holds: EPIPE on the way
        print("line", n, "of output nobody reads")
        ctx.log.info("log line %d", n)
    ctx.db.execute(text("INSERT INTO calls (version, seq) VALUES ('done', 1)"))
"""


def test_a_client_that_went_away_does_not_change_the_outcome(backend, release, tmp_path):
    create_calls(backend)
    marker, go = tmp_path / "inside", tmp_path / "go"
    write(
        release / "migrations",
        "202001010000_goes_on.py",
        GOES_ON.format(marker=str(marker), go=str(go)),
    )
    read_out, write_out = os.pipe()
    read_err, write_err = os.pipe()
    process = subprocess.Popen(
        ["setsid", *RUNNER, "apply", "--json", *backend.cli_args()],
        cwd=release,
        env=clean_env(),
        stdout=write_out,
        stderr=write_err,
    )
    os.close(write_out)
    os.close(write_err)
    wait_for(marker, process)
    # The SSH session drops: nobody reads stdout or stderr any more, and a hangup arrives.
    os.close(read_out)
    os.close(read_err)
    os.kill(process.pid, signal.SIGHUP)
    go.touch()

    assert process.wait(timeout=60) == 0
    assert backend.query("SELECT version FROM calls") == [("done",)]
    assert backend.query("SELECT version FROM data_migrations") == [("202001010000",)]
    assert [(v, s) for v, s, _ in attempts(backend)] == [("202001010000", "applied")]


# --------------------------------------------------------------------------- status


SLEEPS = """
import pathlib, time

def run(ctx):
    pathlib.Path({marker!r}).touch()
    time.sleep(120)
"""


def test_status_shows_running_then_interrupted_after_sigkill(backend, release, tmp_path):
    marker = tmp_path / "inside"
    write(release / "migrations", "202001010000_sleeps.py", SLEEPS.format(marker=str(marker)))
    process = subprocess.Popen(
        [*RUNNER, "apply", "--json", *backend.cli_args()],
        cwd=release,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(marker, process)
        running = runner.status(backend.settings(release / "migrations"))
    finally:
        process.kill()
        process.wait(10)
    assert [(m.state, m.release) for m in running.migrations] == [("running", None)]
    assert running.pending == 0

    after = runner.status(backend.settings(release / "migrations"))
    [line] = after.migrations
    assert line.state == "interrupted" and line.error is None
    assert after.pending == 1
    # the next runner settles the killed attempt, then applies it (it only sleeps once)
    marker.unlink()
    write(release / "migrations", "202001010000_sleeps.py", "def run(ctx):\n    pass\n")
    assert runner.apply(backend.settings(release / "migrations")).ok
    assert [(v, s) for v, s, _ in attempts(backend)] == [
        ("202001010000", "interrupted"),
        ("202001010000", "applied"),
    ]


def test_after_a_rollback_status_shows_the_failed_attempt_of_the_newer_release(
    backend, release, tmp_path
):
    old = release  # the release the deploy went back to: without the new migration's file
    write(old / "migrations", "202001010000_base.py", "def run(ctx):\n    pass\n")
    assert runner.apply(backend.settings(old / "migrations", release="R-old")).ok
    new = tmp_path / "new-release"
    (new / "migrations").mkdir(parents=True)
    write(new / "migrations", "202001010000_base.py", "def run(ctx):\n    pass\n")
    write(
        new / "migrations",
        "202001010100_breaks.py",
        "def run(ctx):\n    raise RuntimeError('boom in the new release')\n",
    )
    assert runner.apply(backend.settings(new / "migrations", release="R-new")).failed

    answer = cli("status", "--json", *backend.cli_args(), cwd=old)

    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)
    failed = data["migrations"][1]
    assert (failed["version"], failed["name"], failed["state"]) == (
        "202001010100",
        "breaks",
        "failed",
    )
    assert failed["release"] == "R-new" and failed["in_release"] is False
    assert failed["error"] == "RuntimeError: boom in the new release"
    assert data["pending"] == 0, "a migration this release lacks is not pending here"
    assert any("not in this release" in w for w in data["warnings"])
    table = cli("status", *backend.cli_args(), cwd=old, env=clean_env(COLUMNS="80"))
    row = next(line for line in table.stdout.splitlines() if "202001010100" in line)
    assert "failed" in row
    assert "not in this release" in table.stdout


def test_the_ledger_id_is_created_once_and_never_changes(backend, release):
    write(release / "migrations", "202001010000_a.py", "def run(ctx):\n    pass\n")
    first = runner.apply(backend.settings(release / "migrations"))
    write(release / "migrations", "202001010001_b.py", "def run(ctx):\n    pass\n")
    second = runner.apply(backend.settings(release / "migrations"))
    assert first.ledger_id == second.ledger_id
    assert runner.status(backend.settings(release / "migrations")).ledger_id == first.ledger_id
    assert backend.query("SELECT id FROM data_migration_ledger") == [(first.ledger_id,)]


def test_an_old_ledger_gains_the_new_tables(backend, release):
    """A ledger written by the previous runner (two tables) is read, then completed."""
    engine = backend.engine()
    with engine.begin() as conn:
        for table in ledger.CORE_TABLES:
            table.create(conn)
    engine.dispose()
    write(release / "migrations", "202001010000_a.py", "def run(ctx):\n    pass\n")
    assert runner.status(backend.settings(release / "migrations")).ledger_id is None
    result = runner.apply(backend.settings(release / "migrations"))
    assert result.ok and result.ledger_id
    engine = backend.engine()
    with engine.connect() as conn:
        assert ledger.existing_tables(conn) == {t.name for t in ledger.metadata.sorted_tables}
    engine.dispose()


def test_status_on_a_ledger_without_tables_creates_nothing_on_postgresql(pg_url, release):
    answer = cli("status", "--json", "--database-url", pg_url, cwd=release)
    assert answer.returncode == 0, answer.stderr
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == []
    engine.dispose()


def test_a_process_left_running_by_a_migration_does_not_hold_the_runner(backend, release, tmp_path):
    pid_file = tmp_path / "daemon.pid"
    write(
        release / "migrations",
        "202001010000_starts_a_daemon.py",
        f"""
        import pathlib, subprocess

        def run(ctx):
            # inherits the runner's stdout and stderr and outlives it
            daemon = subprocess.Popen(["sleep", "300"])
            pathlib.Path({str(pid_file)!r}).write_text(str(daemon.pid))
            print("started", daemon.pid)
        """,
    )
    try:
        answer = cli("apply", "--json", *backend.cli_args(), cwd=release, timeout=60)
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["applied"][0]["name"] == "starts_a_daemon"
