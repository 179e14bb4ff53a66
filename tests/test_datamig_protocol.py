"""The runner's protocol with the deploy client: ``check``, phases, JSON error answers, flags,
and the configuration errors a client must be able to tell apart (exit 2, never a leak)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa
import test_datamig_runner as base
from test_datamig_runner import clean_env, cli, create_calls, insert_call, write

from deploytools.datamig import ledger, runner
from deploytools.datamig.envfile import secret_values

backend = base.backend  # fixtures: PostgreSQL and SQLite ledgers, a release directory
release = base.release


def test_protocol_is_importable_without_sqlalchemy():
    code = (
        "import sys, deploytools.datamig as d; "
        "assert 'sqlalchemy' not in sys.modules and 'redis' not in sys.modules; "
        "print(d.PROTOCOL, d.PHASES)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split(" ", 1)[0] == "2"
    assert "before_switch" in out.stdout


# --------------------------------------------------------------------------- check


def test_check_lists_pending_with_phases_and_creates_nothing(backend, release, tmp_path):
    folder = release / "migrations"
    marker = tmp_path / "ran"
    write(folder, "202001010000_first.py", "def run(ctx):\n    pass\n")
    write(
        folder,
        "202001010001_expand.py",
        f"phase = 'before_switch'\n\ndef run(ctx):\n    open({str(marker)!r}, 'w')\n",
    )
    write(
        folder,
        "202001010002_backfill.py",
        'phase: str = "after_restart"\n\ndef run(ctx):\n    pass\n',
    )

    answer = cli("check", "--json", *backend.cli_args(), cwd=release)

    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)
    assert data == {
        "protocol": 2,
        "ledger": backend.display,
        "ledger_id": None,
        "pending": [
            {"version": "202001010000", "name": "first", "phase": "after_switch"},
            {"version": "202001010001", "name": "expand", "phase": "before_switch"},
            {"version": "202001010002", "name": "backfill", "phase": "after_restart"},
        ],
        "applied": 0,
        "warnings": [],
    }
    assert not marker.exists(), "check ran a migration"
    assert not list(release.rglob("__pycache__")), "check wrote bytecode into the release"
    if backend.kind == "sqlite":
        assert list((backend.root / "shared").iterdir()) == [], "check created a file"
    else:
        assert backend.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]

    applied = runner.apply(backend.settings(folder, phase="after_switch"))
    assert [d.version for d in applied.applied] == ["202001010000"]
    again = json.loads(cli("check", "--json", *backend.cli_args(), cwd=release).stdout)
    assert again["ledger_id"] == applied.ledger_id and len(applied.ledger_id) == 32
    assert again["applied"] == 1
    assert [m["version"] for m in again["pending"]] == ["202001010001", "202001010002"]


def test_check_with_redis_pings_it(backend, release, redis_url):
    write(release / "migrations", "202001010000_first.py", "def run(ctx):\n    pass\n")
    env = clean_env(REDIS_URL=redis_url)
    answer = cli("check", "--json", *backend.cli_args(), cwd=release, env=env)
    assert answer.returncode == 0, answer.stderr


CHECK_FINDINGS = {
    "import error": ("202001010001_broken.py", "import no_such_module_abc\ndef run(ctx): pass\n"),
    "bad phase": ("202001010001_bad_phase.py", "phase = 'before_lunch'\ndef run(ctx): pass\n"),
    "computed phase": ("202001010001_computed.py", "phase = 'before_' + 'switch'\ndef run(c): 0\n"),
    "exits on import": ("202001010001_exits.py", "import sys\nsys.exit(0)\n"),
    "os._exit on import": ("202001010001_hard_exit.py", "import os\nos._exit(7)\n"),
}


@pytest.mark.parametrize("case", CHECK_FINDINGS)
def test_check_finds_a_broken_pending_migration(case, tmp_path, release):
    root = tmp_path / "root"
    (root / "shared").mkdir(parents=True)
    filename, body = CHECK_FINDINGS[case]
    write(release / "migrations", "202001010000_fine.py", "def run(ctx):\n    pass\n")
    write(release / "migrations", filename, body)

    for command in ("check", "apply"):
        answer = cli(command, "--json", "--root", str(root), cwd=release)
        assert answer.returncode == 2, (command, answer.stderr)
        data = json.loads(answer.stdout)
        assert data["protocol"] == 2 and data["exit_code"] == 2
        assert filename in data["error"]
        if "phase" in case:
            assert "before_switch" in data["error"] and "after_restart" in data["error"]
    # apply stopped before running anything
    engine = ledger.create_engine(ledger.ledger_database(None, root))
    with engine.connect() as conn:
        assert ledger.applied_rows(conn) == {}
    engine.dispose()


def test_a_version_under_another_name_stops_check_and_apply(backend, release):
    folder = release / "migrations"
    write(folder, "202001010000_original_name.py", "def run(ctx):\n    pass\n")
    assert runner.apply(backend.settings(folder, release="R1")).ok
    (folder / "202001010000_original_name.py").rename(folder / "202001010000_new_name.py")

    for command in ("check", "apply"):
        answer = cli(command, "--json", *backend.cli_args(), cwd=release)
        assert answer.returncode == 2, answer.stderr
        error = json.loads(answer.stdout)["error"]
        assert "202001010000_original_name" in error and "202001010000_new_name.py" in error
    status = json.loads(cli("status", "--json", *backend.cli_args(), cwd=release).stdout)
    assert [m["state"] for m in status["migrations"]] == ["changed"]
    assert any("new_name" in warning for warning in status["warnings"])


def test_check_names_an_unreachable_database_without_its_password(release):
    write(release / "migrations", "202001010000_fine.py", "def run(ctx):\n    pass\n")
    url = "postgresql+psycopg://app:Sup3r-Secret-pw@127.0.0.1:1/app"
    answer = cli("check", "--json", "--database-url", url, cwd=release)
    assert answer.returncode == 2, answer.stderr
    data = json.loads(answer.stdout)
    assert "postgresql+psycopg://app:***@127.0.0.1:1/app" in data["error"]
    assert "Sup3r-Secret-pw" not in answer.stdout + answer.stderr


def test_check_names_an_unreachable_redis(backend, release):
    write(release / "migrations", "202001010000_fine.py", "def run(ctx):\n    pass\n")
    env = clean_env(REDIS_URL="redis://:Redis-Secret-pw@127.0.0.1:1/0")
    answer = cli("check", "--json", *backend.cli_args(), cwd=release, env=env)
    assert answer.returncode == 2, answer.stderr
    data = json.loads(answer.stdout)
    assert "Redis" in data["error"] and "127.0.0.1:1" in data["error"]
    assert "Redis-Secret-pw" not in answer.stdout + answer.stderr


def test_check_refuses_a_sqlite_ledger_that_cannot_be_created(tmp_path, release):
    write(release / "migrations", "202001010000_fine.py", "def run(ctx):\n    pass\n")
    root = tmp_path / "root"
    root.mkdir()  # no shared/
    answer = cli("check", "--json", "--root", str(root), cwd=release)
    assert answer.returncode == 2, answer.stderr
    assert "invoke setup" in json.loads(answer.stdout)["error"]


# --------------------------------------------------------------------------- phases


PHASED = {
    "202001010000_expand.py": "before_switch",
    "202001010001_main.py": None,
    "202001010002_contract.py": "after_restart",
    "202001010003_more.py": "after_switch",
}


def test_apply_by_phase_runs_only_that_phase_in_version_order(backend, release):
    folder = release / "migrations"
    create_calls(backend)
    for filename, phase in PHASED.items():
        body = insert_call(filename.split("_")[0])
        if phase:
            body = f"phase = {phase!r}\n" + body.lstrip("\n").replace("        ", "")
        write(folder, filename, body)

    def applied(*flags: str) -> list[str]:
        answer = cli("apply", "--json", *flags, *backend.cli_args(), cwd=release)
        assert answer.returncode == 0, answer.stderr
        data = json.loads(answer.stdout)
        assert data["phase"] == (flags[1] if flags else None)
        return [done["version"] for done in data["applied"]]

    dry = json.loads(
        cli(
            "apply",
            "--dry-run",
            "--json",
            "--phase",
            "after_switch",
            *backend.cli_args(),
            cwd=release,
        ).stdout
    )
    assert [m["version"] for m in dry["would_apply"]] == ["202001010001", "202001010003"]
    assert applied("--phase", "before_switch") == ["202001010000"]
    assert applied("--phase", "after_switch") == ["202001010001", "202001010003"]
    assert applied("--phase", "after_restart") == ["202001010002"]
    assert applied() == []
    assert backend.query("SELECT version FROM calls ORDER BY seq") == [
        ("202001010000",),
        ("202001010001",),
        ("202001010003",),
        ("202001010002",),
    ]
    phases = {m.version: m.phase for m in runner.status(backend.settings(folder)).migrations}
    assert phases == {
        "202001010000": "before_switch",
        "202001010001": "after_switch",
        "202001010002": "after_restart",
        "202001010003": "after_switch",
    }


# --------------------------------------------------------------------------- arguments


BAD_ARGUMENTS = {
    "negative lock timeout": (["apply", "--lock-timeout", "-1"], "--lock-timeout"),
    "lock timeout not a number": (["apply", "--lock-timeout", "soon"], "--lock-timeout"),
    "infinite lock timeout": (["apply", "--lock-timeout", "inf"], "--lock-timeout"),
    "zero statement timeout": (["apply", "--statement-timeout", "0"], "--statement-timeout"),
    "negative pg lock timeout": (["check", "--pg-lock-timeout", "-2"], "--pg-lock-timeout"),
    "unknown phase": (["apply", "--phase", "whenever"], "--phase"),
    "unknown flag": (["status", "--colour"], "--colour"),
    "unknown command": (["migrate"], "migrate"),
    "revert without target": (["revert", "--root", "."], "VERSION"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_are_exit_2_with_one_json_error(case, release):
    argv, named = BAD_ARGUMENTS[case]
    answer = cli(*argv, "--json", cwd=release)
    assert answer.returncode == 2, answer.stderr
    data = json.loads(answer.stdout)
    assert data["protocol"] == 2 and data["exit_code"] == 2
    assert named in data["error"]
    plain = cli(*argv, cwd=release)
    assert plain.returncode == 2 and plain.stdout == "" and named in plain.stderr


def test_lock_timeout_zero_means_do_not_wait(backend, release):
    from deploytools.datamig.lock import AdvisoryLock, FileLock, lock_file_path

    write(release / "migrations", "202001010000_x.py", "def run(ctx):\n    pass\n")
    engine = backend.engine()
    database = backend.database
    lock = (
        FileLock(lock_file_path(database), "test")
        if backend.kind == "sqlite"
        else AdvisoryLock(engine, "test")
    )
    lock.acquire(timeout=0)
    try:
        answer = cli("apply", "--json", "--lock-timeout", "0", *backend.cli_args(), cwd=release)
    finally:
        lock.release()
        engine.dispose()
    assert answer.returncode == 3, answer.stderr
    assert "waited 0 s" in json.loads(answer.stdout)["error"]


# --------------------------------------------------------------------------- URLs and secrets


def test_a_relative_sqlite_url_is_refused(release):
    answer = cli("apply", "--json", "--database-url", "sqlite:///ledger.db", cwd=release)
    assert answer.returncode == 2
    assert "sqlite:////srv/app/shared/ledger.db" in json.loads(answer.stdout)["error"]
    assert not (release / "ledger.db").exists()


def test_a_url_with_one_slash_is_refused_without_its_password(release):
    url = "postgresql+psycopg:/app:Pa55-w0rd-XYZ@db/app"
    for args in (["--database-url", url], []):
        env = clean_env() if args else clean_env(DATABASE_URL=url)
        answer = cli("status", "--json", *args, cwd=release, env=env)
        assert answer.returncode == 2
        error = json.loads(answer.stdout)["error"]
        assert "'://'" in error and "postgresql+psycopg" in error
        assert "Pa55-w0rd-XYZ" not in answer.stdout + answer.stderr


def test_secret_values_of_an_environment():
    environ = {
        "DATABASE_URL": "postgresql://app:db-pass-1@db/app",
        "BROKEN_URL": "postgresql+psycopg:/app:loose-pass-2@db/app",
        "API_TOKEN": "tok-123456",
        "aws_secret_access_key": "AKIA-SECRET",
        "DJANGO_SECRET_KEY": "django-key-xyz",
        "STRIPE_PASSWORD": "abc",  # too short to mask safely
        "FEATURE_KEY_ENABLED": "true",
        "HOME": "/root",
        "PLAIN_URL": "https://example.com/path",
    }
    assert secret_values(environ) == sorted(
        ["db-pass-1", "loose-pass-2", "tok-123456", "AKIA-SECRET", "django-key-xyz"]
    )


LEAKY = """
import os, subprocess, sys
from sqlalchemy import text

def run(ctx):
    print(dict(os.environ))
    subprocess.run(["env"], check=True)
    ctx.log.info("token is %s", os.environ["API_TOKEN"])
    ctx.db.execute(text("SELECT :t"), {"t": "param " + os.environ["API_TOKEN"]})
    ctx.db.execute(text("SELECT * FROM no_such_table WHERE x = :t"), {"t": "BOUND" + "-PARAM-9"})
"""


@pytest.mark.parametrize("ending", ["raises", "exits"])
def test_env_file_secrets_never_leak(ending, tmp_path, release, pg_url):
    body = LEAKY
    if ending == "exits":
        body = body.replace(
            '    ctx.db.execute(text("SELECT * FROM',
            '    sys.exit(os.environ["API_TOKEN"])\n    ctx.db.execute(text("SELECT * FROM',
        )
    write(release / "migrations", "202001010000_leaky.py", body)
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"DATABASE_URL={pg_url}\n"
        "API_TOKEN=tok-Very-Secret-77\n"
        "REDIS_URL=redis://:redis-Secret-88@127.0.0.1:1/0\n"
        "SHORT_KEY=abc\n"
    )
    env = clean_env(MY_PASSWORD="from-the-environment-99")

    answer = cli("apply", "--json", "--env-file", str(env_file), cwd=release, env=env)

    assert answer.returncode == 1, answer.stderr
    data = json.loads(answer.stdout)
    assert data["failed"]["name"] == "leaky" and data["exit_code"] == 1
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT error FROM data_migration_attempts")).scalar_one()
    engine.dispose()
    everything = answer.stdout + answer.stderr + stored
    for secret in ("tok-Very-Secret-77", "redis-Secret-88", "from-the-environment-99"):
        assert secret not in everything
    assert "BOUND-PARAM-9" not in everything, "a bound parameter reached the output"
    assert "SHORT_KEY=abc" in answer.stderr  # short values are not masked: they would mask all
    assert "***" in answer.stderr
    if ending == "exits":
        assert data["failed"]["error"] == "the migration exited the process (sys.exit('***'))"
    else:
        assert "no_such_table" in data["failed"]["error"]


def test_check_refuses_a_database_user_that_cannot_write_the_ledger(pg_url, release):
    """A role without CREATE on the schema (PostgreSQL 15's default for new roles) cannot make
    the ledger; once it exists, a role without INSERT cannot write it."""
    write(release / "migrations", "202001010000_fine.py", "def run(ctx):\n    pass\n")
    role = f"reader_{pg_url.rsplit('/', 1)[1]}"
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    reader_url = pg_url.replace("postgres@", f"{role}@")

    answer = cli("check", "--json", "--database-url", reader_url, cwd=release)
    assert answer.returncode == 2, answer.stderr
    assert "cannot create the ledger tables" in json.loads(answer.stdout)["error"]

    assert runner.apply(runner.Settings(path=release / "migrations", database_url=pg_url)).ok
    with engine.connect() as conn:
        conn.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
    answer = cli("check", "--json", "--database-url", reader_url, cwd=release)
    engine.dispose()
    assert answer.returncode == 2, answer.stderr
    assert "cannot write the data_migrations table" in json.loads(answer.stdout)["error"]


def test_output_reaches_stderr_as_it_happens(backend, release, tmp_path):
    go = tmp_path / "go"
    write(
        release / "migrations",
        "202001010000_talks.py",
        f"""
        import pathlib, subprocess, time

        def run(ctx):
            print("printed before waiting")
            ctx.log.info("logged before waiting")
            subprocess.run(["echo", "child output before waiting"], check=True)
            while not pathlib.Path({str(go)!r}).exists():
                time.sleep(0.02)
            print("printed after")
        """,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "deploytools.datamig", "apply", "--json", *backend.cli_args()],
        cwd=release,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wanted = ["printed before waiting", "logged before waiting", "child output before waiting"]
    seen = ""
    try:
        # The migration is still waiting: these lines can only come from live streaming.
        while not all(text in seen for text in wanted):
            line = process.stderr.readline()
            assert line, f"stderr ended early: {seen}"
            seen += line
        assert process.poll() is None
    finally:
        go.touch()
    stdout, rest = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    assert "printed after" in rest
    assert json.loads(stdout)["applied"][0]["name"] == "talks"
