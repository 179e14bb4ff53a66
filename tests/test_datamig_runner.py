"""The runner against real ledgers: PostgreSQL (the suite's server) and SQLite (a file).

Behaviour that crosses processes (exit codes, stdout/stderr, the lock) goes through the command
line as a subprocess; the rest calls the runner functions directly.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from deploytools.datamig import ledger, runner
from deploytools.datamig.__main__ import exit_code_for
from deploytools.datamig.lock import AdvisoryLock, FileLock, lock_file_path
from deploytools.datamig.runner import Settings
from deploytools.exceptions import (
    LockHeld,
    MigrationFailed,
    MigrationFileError,
    UsageError,
)


@dataclass
class Backend:
    """One ledger under test: PostgreSQL (``database_url``) or SQLite under ``root``."""

    kind: str
    database_url: str | None
    root: Path | None

    def settings(self, path: Path, **values) -> Settings:
        return Settings(path=path, root=self.root, database_url=self.database_url, **values)

    @property
    def database(self) -> ledger.LedgerDatabase:
        return ledger.ledger_database(self.database_url, self.root)

    def engine(self) -> sa.Engine:
        return ledger.create_engine(self.database)

    @property
    def display(self) -> str:
        """How the runner names this ledger: the SQLite file, or the URL (no password here)."""
        if self.database_url:
            return self.database_url
        return str(self.root.resolve() / "shared" / "datamig.sqlite3")

    def cli_args(self) -> list[str]:
        if self.database_url:
            return ["--database-url", self.database_url]
        return ["--root", str(self.root)]

    def query(self, sql: str, **params) -> list[tuple]:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sa.text(sql), params)]
        finally:
            engine.dispose()

    def execute(self, sql: str) -> None:
        engine = self.engine()
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(sql))
        finally:
            engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request, tmp_path) -> Backend:
    if request.param == "postgresql":
        return Backend("postgresql", request.getfixturevalue("pg_url"), None)
    root = tmp_path / "root"
    (root / "shared").mkdir(parents=True)
    return Backend("sqlite", None, root)


@pytest.fixture
def release(tmp_path) -> Path:
    """A release directory (the runner's cwd) with an empty migrations folder."""
    directory = tmp_path / "release"
    (directory / "migrations").mkdir(parents=True)
    return directory


def write(folder: Path, filename: str, body: str) -> Path:
    path = folder / filename
    path.write_text(textwrap.dedent(body))
    return path


def insert_call(version: str, extra: str = "") -> str:
    """A migration body that records its call, numbered, in the ``calls`` table."""
    return f'''
        """Records its call."""
        from sqlalchemy import text

        def run(ctx):
            seq = ctx.db.execute(text("SELECT COUNT(*) FROM calls")).scalar_one()
            insert = text("INSERT INTO calls (version, seq) VALUES (:v, :s)")
            ctx.db.execute(insert, {{"v": "{version}", "s": seq}})
            {extra}
        '''


def create_calls(backend: Backend) -> None:
    backend.execute("CREATE TABLE calls (version VARCHAR(40), seq INTEGER)")


def clean_env(**extra: str) -> dict[str, str]:
    # Without PYTHONDONTWRITEBYTECODE, so that "no bytecode in the release" is the runner's doing.
    unset = {"DATABASE_URL", "REDIS_URL", "PYTHONDONTWRITEBYTECODE"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(extra)
    return env


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "deploytools.datamig", *args],
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- apply


def test_apply_runs_everything_in_version_order_then_nothing(backend, release):
    folder = release / "migrations"
    create_calls(backend)
    # 12- and 14-digit versions interleave after padding: 201912312359 < 20200101000000 < ...
    files = ["202001010001_third", "20200101000000_second", "201912312359_first"]
    for stem in files:
        write(folder, f"{stem}.py", insert_call(stem.split("_")[0]))
    (release / "app_helpers.py").write_text("SEQ_TABLE = 'calls'\n")  # the release's own code
    write(
        folder, "202001010002_uses_app_code.py", "import app_helpers\n\ndef run(ctx):\n    pass\n"
    )
    before = datetime.now(UTC)

    first = cli(
        "apply", "--json", "--release", "20240101120000-abc1234", *backend.cli_args(), cwd=release
    )

    after = datetime.now(UTC)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    expected = ["201912312359", "20200101000000", "202001010001"]
    assert result["failed"] is None and result["pending_before"] == 4
    assert [done["version"] for done in result["applied"]] == [*expected, "202001010002"]
    assert [done["name"] for done in result["applied"]] == [
        "first",
        "second",
        "third",
        "uses_app_code",
    ]
    assert backend.query("SELECT version FROM calls ORDER BY seq") == [(v,) for v in expected]
    engine = backend.engine()
    with engine.connect() as conn:
        rows = ledger.applied_rows(conn)
        attempts = conn.execute(
            sa.select(ledger.data_migration_attempts).order_by(ledger.data_migration_attempts.c.id)
        ).all()
    engine.dispose()
    assert sorted(row.version for row in rows.values()) == [*expected, "202001010002"]
    for row in rows.values():
        path = next(folder.glob(f"{row.version}_*.py"))
        assert row.name == path.stem.split("_", 1)[1]
        assert row.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
        assert row.applied_at.tzinfo is not None and row.applied_at.utcoffset().total_seconds() == 0
        assert before <= row.applied_at <= after
        assert row.duration_ms >= 0
        assert row.release == "20240101120000-abc1234"
        assert row.host == socket.gethostname()
        assert row.applied_by == getpass.getuser()
        assert row.out_of_order is False
    assert [(a.version, a.status, a.error) for a in attempts] == [
        (v, "applied", None) for v in [*expected, "202001010002"]
    ]
    assert all(a.started_at <= a.finished_at for a in attempts)

    # The second apply, as the deploy runs it: over the command line, JSON, exit 0.
    second = cli("apply", "--json", *backend.cli_args(), cwd=release)
    assert second.returncode == 0, second.stderr
    answer = json.loads(second.stdout)
    assert answer == {
        "protocol": 2,
        "applied": [],
        "failed": None,
        "pending_before": 0,
        "phase": None,
        "ledger": backend.display,
        "ledger_id": result["ledger_id"],
        "warnings": [],
    }
    assert len(result["ledger_id"]) == 32 and result["protocol"] == 2
    assert backend.query("SELECT COUNT(*) FROM calls") == [(3,)]
    assert not list(release.rglob("__pycache__")), "bytecode was written into the release"


def test_a_raising_migration_is_rolled_back_recorded_and_stops_the_run(backend, release):
    folder = release / "migrations"
    create_calls(backend)
    write(folder, "202001010000_one.py", insert_call("202001010000"))
    broken = insert_call(
        "202001010001",
        extra='ctx.db.execute(text("CREATE TABLE made_by_two (x INTEGER)"))\n'
        '            raise ValueError("boom: table two is inconsistent")',
    )
    two = write(folder, "202001010001_two.py", broken)
    write(folder, "202001010002_three.py", insert_call("202001010002"))

    answer = cli("apply", "--json", "--release", "R1", *backend.cli_args(), cwd=release)

    assert answer.returncode == 1, answer.stderr
    data = json.loads(answer.stdout)
    assert data["applied"] == [
        {"version": "202001010000", "name": "one", "duration_ms": data["applied"][0]["duration_ms"]}
    ]
    assert data["failed"] == {
        "version": "202001010001",
        "name": "two",
        "error": "ValueError: boom: table two is inconsistent",
    }
    assert data["pending_before"] == 3
    # Its writes (DDL included) are gone, the one before stays, the one after never ran.
    assert backend.query("SELECT version FROM calls") == [("202001010000",)]
    engine = backend.engine()
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("made_by_two")
        assert set(ledger.applied_rows(conn)) == {"20200101000000"}
        failed = ledger.last_attempts(conn)["20200101000100"]
    engine.dispose()
    assert failed.status == "failed" and failed.release == "R1"
    assert failed.error.startswith("ValueError: boom: table two is inconsistent")
    assert "Traceback" in failed.error and "202001010001_two.py" in failed.error

    report = runner.status(backend.settings(folder))
    states = {m.version: (m.state, m.error) for m in report.migrations}
    assert states == {
        "202001010000": ("applied", None),
        "202001010001": ("failed", "ValueError: boom: table two is inconsistent"),
        "202001010002": ("pending", None),
    }
    assert report.pending == 2

    two.write_text(two.read_text().replace("raise ValueError", "pass  # fixed: ValueError"))
    result = runner.apply(backend.settings(folder))
    assert result.ok and [d.version for d in result.applied] == ["202001010001", "202001010002"]
    assert backend.query("SELECT version FROM calls ORDER BY seq") == [
        ("202001010000",),
        ("202001010001",),
        ("202001010002",),
    ]
    assert {m.state for m in runner.status(backend.settings(folder)).migrations} == {"applied"}


BAD_FILES = {
    "malformed name": ("20200101_short.py", "def run(ctx):\n    pass\n"),
    "duplicate version": ("20200101000100_again.py", "def run(ctx):\n    pass\n"),
    "syntax error": ("202001010002_broken.py", "def run(ctx)\n    pass\n"),
    "missing run": ("202001010002_no_run.py", "def apply(ctx):\n    pass\n"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_exit_2_before_any_migration_runs(case, tmp_path, release):
    folder = release / "migrations"
    marker = tmp_path / "ran"
    write(folder, "202001010000_good.py", f"def run(ctx):\n    open({str(marker)!r}, 'w')\n")
    write(folder, "202001010001_also_good.py", "def run(ctx):\n    pass\n")
    filename, body = BAD_FILES[case]
    write(folder, filename, body)
    root = tmp_path / "root"
    (root / "shared").mkdir(parents=True)

    answer = cli("apply", "--json", "--root", str(root), cwd=release)

    assert answer.returncode == 2, answer.stderr
    error = json.loads(answer.stdout)  # the error answer: one object, no result fields
    assert error["protocol"] == 2 and error["exit_code"] == 2
    assert filename in error["error"] and "applied" not in error
    assert filename in answer.stderr
    if case == "duplicate version":
        assert "202001010001_also_good.py" in answer.stderr
    assert not marker.exists(), "a migration ran before the bad file was reported"
    if (root / "shared" / "datamig.sqlite3").exists():
        engine = ledger.create_engine(ledger.ledger_database(None, root))
        with engine.connect() as conn:
            assert ledger.applied_rows(conn) == {}
        engine.dispose()


def test_a_module_that_fails_to_import_stops_the_run_before_anything(backend, release, tmp_path):
    folder = release / "migrations"
    marker = tmp_path / "ran"
    write(folder, "202001010000_good.py", f"def run(ctx):\n    open({str(marker)!r}, 'w')\n")
    write(
        folder,
        "202001010001_bad_import.py",
        "import no_such_module_xyz\n\ndef run(ctx):\n    pass\n",
    )
    with pytest.raises(MigrationFileError, match=r"202001010001_bad_import\.py.*line 1.*no_such"):
        runner.apply(backend.settings(folder))
    assert not marker.exists()


def test_changed_missing_and_out_of_order(backend, release, caplog):
    folder = release / "migrations"
    first = write(folder, "202001010000_first.py", "def run(ctx):\n    pass\n")
    third = write(folder, "202001010002_third.py", "def run(ctx):\n    pass\n")
    assert runner.apply(backend.settings(folder)).ok

    # Edited after it ran; apply must not even import it (only pending modules are imported).
    first.write_text("raise RuntimeError('imported an applied migration')\n")
    third.unlink()
    write(folder, "202001010001_second.py", "def run(ctx):\n    pass\n")
    caplog.set_level(logging.WARNING, logger="deploytools.datamig")

    result = runner.apply(backend.settings(folder))

    assert result.ok and [d.version for d in result.applied] == ["202001010001"]
    assert any("202001010000_first.py changed" in w for w in result.warnings)
    assert any("202001010002" in w and "file is gone" in w for w in result.warnings)
    assert "changed after it was applied" in caplog.text
    report = {m.version: m for m in runner.status(backend.settings(folder)).migrations}
    assert {v: m.state for v, m in report.items()} == {
        "202001010000": "changed",
        "202001010001": "applied",
        "202001010002": "missing",
    }
    assert report["202001010001"].out_of_order is True
    assert report["202001010000"].out_of_order is False


def test_status_is_read_only_and_lists_everything_pending(backend, release):
    folder = release / "migrations"
    write(folder, "202001010000_first.py", "raise RuntimeError('status must not import me')\n")
    write(folder, "202001010001_second.py", "def run(ctx):\n    pass\n")

    answer = cli("status", "--json", *backend.cli_args(), cwd=release)

    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)
    assert data["pending"] == 2
    assert data["migrations"][0] == {
        "version": "202001010000",
        "name": "first",
        "state": "pending",
        "out_of_order": False,
        "applied_at": None,
        "duration_ms": None,
        "release": None,
        "error": None,
        "progress": None,
        "phase": "after_switch",
        "in_release": True,
    }
    assert data["protocol"] == 2 and data["ledger"] == backend.display
    assert data["ledger_id"] is None and data["warnings"] == []
    if backend.kind == "sqlite":
        assert list((backend.root / "shared").iterdir()) == [], "status created a file"
    else:
        engine = backend.engine()
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == [], "status created tables"
        engine.dispose()


def test_status_table_for_people(backend, release):
    folder = release / "migrations"
    write(folder, "202001010000_copy_the_flags.py", "def run(ctx):\n    pass\n")
    write(folder, "202001010001_later_one.py", "def run(ctx):\n    pass\n")
    runner.apply(backend.settings(folder, release="R7"))
    write(folder, "202001010002_not_yet.py", "def run(ctx):\n    pass\n")

    answer = cli("status", *backend.cli_args(), cwd=release)

    assert answer.returncode == 0, answer.stderr
    lines = answer.stdout.splitlines()
    assert lines[0].startswith(f"Data migrations in {backend.display} (ledger id ")
    header = next(line for line in lines if "Version" in line)
    for column in ("Description", "State", "Applied at", "Duration", "Release"):
        assert column in header
    row = next(line for line in lines if "202001010000" in line)
    assert "copy the flags" in row and "applied" in row and "R7" in row and " ms" in row
    assert "pending" in next(line for line in lines if "202001010002" in line)
    assert lines[-1] == "2 applied, 1 pending; 1 to apply"
    assert "\x1b[" not in answer.stdout, "colours when stdout is not a terminal"


def test_dry_run_lists_pending_and_runs_imports_and_writes_nothing(backend, release, tmp_path):
    folder = release / "migrations"
    marker = tmp_path / "imported"
    write(folder, "202001010000_x.py", f"open({str(marker)!r}, 'w')\ndef run(ctx):\n    pass\n")

    answer = cli("apply", "--dry-run", "--json", *backend.cli_args(), cwd=release)

    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)
    assert data["applied"] == [] and data["pending_before"] == 1
    assert data["would_apply"] == [
        {"version": "202001010000", "name": "x", "phase": "after_switch"}
    ]
    assert not marker.exists()
    if backend.kind == "sqlite":
        assert list((backend.root / "shared").iterdir()) == []
    else:
        engine = backend.engine()
        with engine.connect() as conn:
            assert not ledger.tables_exist(conn)
        engine.dispose()


def test_what_migrations_print_goes_to_stderr_with_json(tmp_path, release):
    folder = release / "migrations"
    write(
        folder,
        "202001010000_noisy.py",
        """
        import os, subprocess, sys

        def run(ctx):
            print("print to stdout")
            sys.stdout.write("partial line without newline")
            print("print to stderr", file=sys.stderr)
            os.write(1, b"raw write to fd 1\\n")
            subprocess.run(["echo", "child process output"], check=True)
            ctx.log.info("a log line")
        """,
    )
    root = tmp_path / "root"
    root.mkdir()

    answer = cli("apply", "--json", "--root", str(root), cwd=release)

    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)  # stdout holds exactly one JSON object
    assert [d["name"] for d in data["applied"]] == ["noisy"]
    for text in (
        "print to stdout",
        "partial line without newline",
        "print to stderr",
        "raw write to fd 1",
        "child process output",
        "a log line",
    ):
        assert text in answer.stderr


def test_ctx_redis_is_lazy_and_explains_a_missing_redis_url(backend, release, redis_url):
    folder = release / "migrations"
    write(folder, "202001010000_no_redis.py", "def run(ctx):\n    ctx.log.info('no redis')\n")
    write(
        folder, "202001010001_uses_redis.py", "def run(ctx):\n    ctx.redis.set('k', ctx.release)\n"
    )

    result = runner.apply(backend.settings(folder))  # no REDIS_URL
    assert [d.name for d in result.applied] == ["no_redis"]
    assert result.failed.name == "uses_redis"
    assert "REDIS_URL is not set" in result.failed.error

    result = runner.apply(backend.settings(folder, redis_url=redis_url, release="R2"))
    assert result.ok
    import redis

    assert redis.Redis.from_url(redis_url).get("k") == b"R2"


def test_a_migration_changing_connection_options_does_not_break_its_ledger_row(backend, release):
    create_calls(backend)
    write(
        release / "migrations",
        "202001010000_streams.py",
        """
        from sqlalchemy import text

        def run(ctx):
            # In SQLAlchemy 2 this changes ctx.db itself: every later statement would stream.
            rows = ctx.db.execution_options(yield_per=10).execute(text("SELECT * FROM calls"))
            rows.all()
        """,
    )
    result = runner.apply(backend.settings(release / "migrations"))
    assert result.ok, result.failed
    assert backend.query("SELECT version FROM data_migrations") == [("202001010000",)]


# --------------------------------------------------------------------------- lock


def test_a_held_lock_fails_with_exit_3_naming_the_holder(backend, release):
    write(release / "migrations", "202001010000_x.py", "def run(ctx):\n    pass\n")
    database = backend.database
    engine = ledger.create_engine(database)
    lock = (
        FileLock(lock_file_path(database), "test")
        if backend.kind == "sqlite"
        else AdvisoryLock(engine, "test")
    )
    lock.acquire(timeout=0)
    try:
        answer = cli("apply", "--json", "--lock-timeout", "0.5", *backend.cli_args(), cwd=release)
        with pytest.raises(LockHeld, match=f"pid={os.getpid()}"):
            runner.apply(backend.settings(release / "migrations", lock_timeout=0))
    finally:
        lock.release()
        engine.dispose()
    assert answer.returncode == 3, answer.stderr
    error = json.loads(answer.stdout)
    assert error["exit_code"] == 3 and error["ledger"] == backend.display
    assert f"pid={os.getpid()}" in error["error"]
    assert f"host={socket.gethostname()}" in answer.stderr
    assert f"pid={os.getpid()}" in answer.stderr
    assert "--lock-timeout" in answer.stderr
    # Once it is free, the same command gets through.
    assert runner.apply(backend.settings(release / "migrations", lock_timeout=1)).ok


# --------------------------------------------------------------------------- revert


REVERTIBLE = """
    from sqlalchemy import text

    def run(ctx):
        ctx.db.execute(text("INSERT INTO calls (version, seq) VALUES ('{v}', 0)"))

    def revert(ctx):
        ctx.db.execute(text("DELETE FROM calls WHERE version = '{v}'"))
        ctx.db.execute(text("INSERT INTO calls (version, seq) VALUES ('undo {v}', 1)"))
    """


def test_revert_a_release_newest_first(backend, release):
    folder = release / "migrations"
    create_calls(backend)
    write(folder, "202001010000_base.py", REVERTIBLE.format(v="202001010000"))
    assert runner.apply(backend.settings(folder, release="R1")).ok
    for version, stem in (("202001010001", "step_one"), ("202001010002", "step_two")):
        write(folder, f"{version}_{stem}.py", REVERTIBLE.format(v=version))
    assert runner.apply(backend.settings(folder, release="R2")).ok

    answer = cli("revert", "--release", "R2", "--json", *backend.cli_args(), cwd=release)

    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)
    assert [d["version"] for d in data["reverted"]] == ["202001010002", "202001010001"]
    assert data["failed"] is None and data["not_revertible"] == []
    rows = backend.query("SELECT version FROM calls WHERE seq = 1")
    assert [r[0] for r in rows] == ["undo 202001010002", "undo 202001010001"]
    assert backend.query("SELECT version FROM calls WHERE seq = 0") == [("202001010000",)]
    states = {m.version: m.state for m in runner.status(backend.settings(folder)).migrations}
    assert states == {
        "202001010000": "applied",
        "202001010001": "pending",
        "202001010002": "pending",
    }
    attempts = backend.query(
        "SELECT version, status, release FROM data_migration_attempts WHERE status = 'reverted'"
    )
    assert sorted(attempts) == [
        ("202001010001", "reverted", "R2"),
        ("202001010002", "reverted", "R2"),
    ]

    nothing = runner.revert(backend.settings(folder), release="R-unknown")
    assert nothing.to_json() == {
        "reverted": [],
        "failed": None,
        "not_revertible": [],
        "ledger": backend.display,
        "ledger_id": data["ledger_id"],
        "warnings": [],
    }


def test_revert_refuses_an_irreversible_target_unless_skipped(backend, release):
    folder = release / "migrations"
    create_calls(backend)
    write(folder, "202001010000_one_way.py", insert_call("202001010000"))
    write(folder, "202001010001_undoable.py", REVERTIBLE.format(v="202001010001"))
    write(folder, "202001010002_gone.py", REVERTIBLE.format(v="202001010002"))
    assert runner.apply(backend.settings(folder, release="R1")).ok
    (folder / "202001010002_gone.py").unlink()

    with pytest.raises(UsageError) as refused:
        runner.revert(backend.settings(folder), release="R1")
    assert "202001010000 one_way: it has no revert(ctx)" in str(refused.value)
    assert "202001010002 gone: its file is missing" in str(refused.value)
    assert "Nothing was reverted" in str(refused.value)
    assert len(backend.query("SELECT * FROM data_migrations")) == 3
    assert exit_code_for(refused.value) == 2

    result = runner.revert(backend.settings(folder), release="R1", skip_irreversible=True)
    assert result.ok
    assert [d.version for d in result.reverted] == ["202001010001"]
    assert [(r.version, r.name) for r in result.not_revertible] == [
        ("202001010002", "gone"),
        ("202001010000", "one_way"),
    ]
    assert sorted(backend.query("SELECT version FROM data_migrations")) == [
        ("202001010000",),
        ("202001010002",),
    ]


def test_revert_one_version_and_a_failing_revert(backend, release):
    folder = release / "migrations"
    create_calls(backend)
    write(folder, "202001010000_ok.py", REVERTIBLE.format(v="202001010000"))
    bad_revert = REVERTIBLE.format(v="202001010001").replace(
        "ctx.db.execute(text(\"INSERT INTO calls (version, seq) VALUES ('undo",
        "raise RuntimeError('cannot undo')\n        ctx.db.execute(text(\"INSERT INTO calls "
        "(version, seq) VALUES ('undo",
    )
    assert "cannot undo" in bad_revert
    write(folder, "202001010001_bad_revert.py", bad_revert)
    assert runner.apply(backend.settings(folder)).ok

    answer = cli("revert", "202001010001", "--json", *backend.cli_args(), cwd=release)

    assert answer.returncode == 1, answer.stderr
    data = json.loads(answer.stdout)
    assert data["reverted"] == [] and data["not_revertible"] == []
    assert data["failed"] == {
        "version": "202001010001",
        "name": "bad_revert",
        "error": "RuntimeError: cannot undo",
    }
    # Rolled back: the row is still there, the migration still applied.
    assert backend.query("SELECT version FROM calls ORDER BY version") == [
        ("202001010000",),
        ("202001010001",),
    ]
    assert len(backend.query("SELECT * FROM data_migrations")) == 2

    result = runner.revert(backend.settings(folder), "20200101000000")  # padded form works
    assert [d.version for d in result.reverted] == ["202001010000"]
    with pytest.raises(UsageError, match="202001010000 is not applied"):
        runner.revert(backend.settings(folder), "202001010000")


# --------------------------------------------------------------------------- configuration


def test_no_ledger_configured_is_exit_2_with_what_to_do(release):
    with pytest.raises(UsageError, match="set DATABASE_URL"):
        runner.status(Settings(path=release / "migrations"))
    answer = cli("status", cwd=release)
    assert answer.returncode == 2
    assert "DATABASE_URL" in answer.stderr and "--root" in answer.stderr


def test_env_file_supplies_database_url_without_overriding_the_environment(
    pg_url, release, tmp_path
):
    write(release / "migrations", "202001010000_x.py", "def run(ctx):\n    pass\n")
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"# production secrets\n\nexport DATABASE_URL='{pg_url}'\nREDIS_URL=\"redis://nowhere:1/0\"\n"
    )
    answer = cli("apply", "--json", "--env-file", str(env_file), cwd=release)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["applied"][0]["version"] == "202001010000"

    # A variable already set wins over the file; a missing env file is fine.
    env = clean_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/unreachable")
    answer = cli("status", "--json", "--env-file", str(env_file), cwd=release, env=env)
    assert answer.returncode == 1
    assert "127.0.0.1:1/unreachable" in answer.stderr
    missing = cli(
        "status",
        "--json",
        "--env-file",
        str(tmp_path / "nope"),
        "--database-url",
        pg_url,
        cwd=release,
    )
    assert missing.returncode == 0, missing.stderr
    assert json.loads(missing.stdout)["pending"] == 0


def test_exit_codes():
    assert exit_code_for(MigrationFileError("x")) == 2
    assert exit_code_for(UsageError("x")) == 2
    assert exit_code_for(LockHeld("x")) == 3
    assert exit_code_for(MigrationFailed("x")) == 1
    assert exit_code_for(RuntimeError("x")) == 1


def test_bad_arguments_exit_2(release):
    assert cli("revert", "--json", "--root", ".", cwd=release).returncode == 2
    assert cli("apply", "--lock-timeout", "soon", cwd=release).returncode == 2


def test_large_status_tables_keep_the_same_columns_and_alignment():
    from io import StringIO

    from deploytools.datamig.render import RICH_TABLE_MAX_ROWS, render_status
    from deploytools.datamig.runner import MigrationStatus, StatusReport

    def report(count: int) -> StatusReport:
        return StatusReport(
            [
                MigrationStatus(f"2020010100{i:04d}", f"part_{i}", "applied", duration_ms=i)
                for i in range(count)
            ],
            ledger="sqlite:///ledger",
        )

    small, large = StringIO(), StringIO()
    render_status(report(3), small)
    render_status(report(RICH_TABLE_MAX_ROWS + 1), large)
    small_lines, large_lines = small.getvalue().splitlines(), large.getvalue().splitlines()
    assert small_lines[1:4] == large_lines[1:4]  # same borders and header
    table = large_lines[1 : RICH_TABLE_MAX_ROWS + 6]
    assert len({len(line) for line in table}) == 1, "rows are not aligned"
    first_row = large_lines[4].split("│")
    assert first_row[1:4] == [" 20200101000000 ", " applied ", " part 0       "]
    assert first_row[4] == "     0 ms "  # Duration is right-aligned, as in the rich table
    assert "│ 20200101000500 │ applied │ part 500" in large.getvalue()
    assert large_lines[-1] == f"{RICH_TABLE_MAX_ROWS + 1} applied; 0 to apply"
