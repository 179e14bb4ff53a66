"""The post-deploy step end to end: three sshd hosts, the runner on the migration host against
a real PostgreSQL and Redis (``shared/.env`` on the hosts holds DATABASE_URL and REDIS_URL),
rollback of every host when a migration or the health check fails."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
FLAGS = "202002111319_migrate_flags_to_redis.py"
FLAGS_SOURCE = (REPO / "migrations" / FLAGS).read_text()

CREATE_THINGS = '''"""Create the things table."""
import sqlalchemy as sa


def run(ctx):
    ctx.db.execute(sa.text("CREATE TABLE things (name text primary key)"))
    ctx.db.execute(sa.text("INSERT INTO things VALUES ('first')"))


def revert(ctx):
    ctx.db.execute(sa.text("DROP TABLE things"))
'''
BOOM = '''"""Fails on purpose."""
import sqlalchemy as sa


def run(ctx):
    ctx.db.execute(sa.text("INSERT INTO things VALUES ('from boom')"))
    raise RuntimeError("boom: the second migration failed")
'''
THIRD = '''"""Never runs after a failure."""
import sqlalchemy as sa


def run(ctx):
    ctx.db.execute(sa.text("INSERT INTO things VALUES ('third')"))


def revert(ctx):
    ctx.db.execute(sa.text("DELETE FROM things WHERE name = 'third'"))
'''
SLOW = '''"""Sleeps, so a test can cut the connection while it runs."""
import os
import pathlib
import time


def run(ctx):
    pathlib.Path(os.environ["MARKER"]).touch()
    time.sleep(4)
'''


@pytest.fixture
def app(ssh_fleet, pg_url, redis_url, tmp_path):
    """The fleet, with shared/.env on every host and the article's feature_flags table."""
    engine = sa.create_engine(pg_url)
    with engine.begin() as db:
        db.execute(sa.text("CREATE TABLE feature_flags (name text primary key, enabled boolean)"))
        db.execute(
            sa.text(
                "INSERT INTO feature_flags VALUES "
                "('2fa_sms', true), ('notifications_beta', false), ('pagination', true)"
            )
        )
    engine.dispose()
    marker = tmp_path / "migration-running"
    for root in ssh_fleet.roots.values():
        (root / "shared" / ".env").write_text(
            f"DATABASE_URL={pg_url}\nREDIS_URL={redis_url}\nMARKER={marker}\n"
        )
    ssh_fleet.facts = {"pg_url": pg_url, "redis_url": redis_url, "marker": marker}
    return ssh_fleet


def ledger(fleet) -> list[dict]:
    engine = sa.create_engine(fleet.facts["pg_url"])
    try:
        with engine.connect() as db:
            rows = db.execute(sa.text("SELECT * FROM data_migrations ORDER BY version")).mappings()
            return [dict(row) for row in rows]
    finally:
        engine.dispose()


def attempts(fleet) -> list[dict]:
    engine = sa.create_engine(fleet.facts["pg_url"])
    try:
        with engine.connect() as db:
            table = _attempts_table(db)
            rows = db.execute(sa.text(f"SELECT * FROM {table} ORDER BY started_at")).mappings()
            return [dict(row) for row in rows]
    finally:
        engine.dispose()


def _attempts_table(db) -> str:
    names = sa.inspect(db).get_table_names()
    return next(name for name in names if "attempt" in name)


def things(fleet) -> list[str]:
    engine = sa.create_engine(fleet.facts["pg_url"])
    try:
        with engine.connect() as db:
            if not sa.inspect(db).has_table("things"):
                return []
            return [row[0] for row in db.execute(sa.text("SELECT name FROM things ORDER BY name"))]
    finally:
        engine.dispose()


def deploy_cli(fleet, *args, **deploy):
    """``invoke deploy --json``: (exit code, report, stderr)."""
    completed = fleet.invoke("deploy", "--json", *args, **deploy)
    report = json.loads(completed.stdout) if completed.stdout.strip() else None
    return completed.returncode, report, completed.stderr


def test_two_pending_migrations_are_applied_once_with_the_release(app):
    first_code, first, _ = deploy_cli(app)
    assert first_code == 0
    previous = first["release"]
    app.repo.commit(
        {
            f"migrations/{FLAGS}": FLAGS_SOURCE,
            "migrations/202601010000_create_things.py": CREATE_THINGS,
        }
    )
    code, report, stderr = deploy_cli(app)
    assert code == 0, stderr
    release = report["release"]
    assert release != previous and report["status"] == "succeeded"
    assert [m["version"] for m in report["migrations"]["applied"]] == [
        "202002111319",
        "202601010000",
    ]
    assert report["migrations"]["pending_before"] == 2
    assert set(app.currents().values()) == {release}
    rows = ledger(app)
    assert [(r["version"], r["release"]) for r in rows] == [
        ("202002111319", release),
        ("202601010000", release),
    ]
    flags = redis.Redis.from_url(app.facts["redis_url"], decode_responses=True)
    assert flags.hgetall("feature_flags") == {
        "2fa_sms": "1",
        "notifications_beta": "0",
        "pagination": "1",
    }
    assert things(app) == ["first"]

    app.repo.bump()
    code, again, stderr = deploy_cli(app)
    assert code == 0, stderr
    assert again["migrations"]["applied"] == [] and again["migrations"]["pending_before"] == 0
    assert len(ledger(app)) == 2


@pytest.mark.parametrize("revert_on_rollback", [False, True])
def test_failing_second_migration_rolls_every_host_back(app, revert_on_rollback):
    code, report, _ = deploy_cli(app)
    previous = report["release"]
    app.repo.commit(
        {
            "migrations/202601010000_create_things.py": CREATE_THINGS,
            "migrations/202601010100_boom.py": BOOM,
            "migrations/202601010200_third.py": THIRD,
        }
    )
    code, report, stderr = deploy_cli(app, datamig={"revert_on_rollback": revert_on_rollback})
    failed_release = report["release"]
    assert code == 1, stderr
    assert report["status"] == "rolled_back"
    assert "boom: the second migration failed" in report["error"]
    assert "202601010100_boom" in stderr and "boom: the second migration failed" in stderr
    assert set(app.currents().values()) == {previous}
    assert report["migrations"]["failed"]["version"] == "202601010100"
    for host in app.names:
        assert failed_release in app.releases(host)  # kept for inspection
        assert not app.locked(host)
        last = app.revisions(host)[-1]
        assert last["status"] == "failed" and last["release"] == failed_release
        assert last["migration"]["version"] == "202601010100"
        assert "boom" in last["error"]

    applied = [row["version"] for row in ledger(app)]
    if revert_on_rollback:
        assert applied == [] and things(app) == []
    else:
        assert applied == ["202601010000"] and things(app) == ["first"]  # boom's insert rolled back
    history = [(a["version"], a["status"]) for a in attempts(app)]
    assert ("202601010100", "failed") in history
    assert all(version != "202601010200" for version, _ in history)  # the third never ran
    boom = next(a for a in attempts(app) if a["status"] == "failed")
    assert "boom: the second migration failed" in boom["error"]

    listing = json.loads(app.invoke("releases", "--json").stdout)
    for entry in listing["hosts"]:
        marks = {r["id"]: r for r in entry["releases"]}
        assert marks[failed_release]["failed"] and not marks[failed_release]["current"]

    # a later rollback never picks the failed release
    app.repo.bump()
    code, _newer, stderr = deploy_cli(app)
    assert code == 1  # boom still fails
    app.repo.commit({"migrations/202601010100_boom.py": BOOM.replace("raise", "return  #")})
    code, _fixed, stderr = deploy_cli(app)
    assert code == 0, stderr
    completed = app.invoke("rollback", "--json")
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["release"] == previous


def test_lost_session_during_migrate_waits_for_the_runner_and_keeps_the_new_code(app, ssh_cluster):
    deploy_cli(app)
    app.repo.commit({"migrations/202601010000_slow.py": SLOW})
    process = app.start_deploy_until(app.facts["marker"])
    migration_host = ssh_cluster.hosts[0]
    assert migration_host.kill_sessions()
    _, stderr = process.communicate(timeout=60)
    # the runner went on without its client; the deploy waited for it on a new connection,
    # read the ledger, found every migration applied: the new code stays
    assert process.returncode == 0, stderr
    assert "was lost while migrations ran" in stderr
    assert [r["version"] for r in ledger(app)] == ["202601010000"]
    current = set(app.currents().values())
    assert len(current) == 1 and current != {None}
    assert [r["release"] for r in ledger(app)] == list(current)
    assert not any(app.locked(host) for host in app.names)


SLOW_THEN_BOOM = (
    SLOW
    + """
    raise RuntimeError("boom after the connection was gone")
"""
)


def test_a_migration_failing_after_a_lost_session_is_waited_for_then_undone(app, ssh_cluster):
    _code, report, _ = deploy_cli(app)
    previous = report["release"]
    app.repo.commit(
        {
            "migrations/202601010000_create_things.py": CREATE_THINGS,
            "migrations/202601010100_slow_then_boom.py": SLOW_THEN_BOOM,
        }
    )
    process = app.start_deploy_until(app.facts["marker"])
    assert ssh_cluster.hosts[0].kill_sessions()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert "202601010100_slow_then_boom" in stderr and "boom after" in stderr
    assert "stayed applied" in stderr and "202601010000_create_things" in stderr
    assert set(app.currents().values()) == {previous}
    # never switched back while the runner could still commit: its attempt ended first
    failed = [a for a in attempts(app) if a["version"] == "202601010100"][-1]
    revision = app.revisions(app.names[0])[-1]
    assert revision["status"] == "failed"
    assert revision["migration"]["version"] == "202601010100"
    assert failed["finished_at"].strftime("%Y-%m-%dT%H:%M:%SZ") <= revision["at"]
    assert things(app) == ["first"]  # the committed migration stayed applied


def test_failing_health_check_rolls_back(app):
    code, report, _ = deploy_cli(app, health_cmd="test ! -f sick || { echo sick >&2; exit 3; }")
    previous = report["release"]
    app.repo.commit({"sick": "yes\n"})
    code, report, stderr = deploy_cli(
        app, health_cmd="test ! -f sick || { echo sick >&2; exit 3; }", health_timeout=2
    )
    assert code == 1, stderr
    assert report["status"] == "rolled_back" and "sick" in report["error"]
    assert set(app.currents().values()) == {previous}
    assert not any(app.locked(host) for host in app.names)
    app.repo.commit({"sick": None})
    code, report, stderr = deploy_cli(app, health_cmd="test ! -f sick")
    assert code == 0, stderr


def test_deploy_json_counts_with_migrations_and_health(app):
    app.repo.commit({f"migrations/{FLAGS}": FLAGS_SOURCE})
    code, report, stderr = deploy_cli(app, health_cmd="true")
    assert code == 0, stderr
    by_host = {h["host"]: h for h in report["hosts"]}
    migration_host = app.names[0]
    for host, entry in by_host.items():
        assert entry["connections"] == 1
        # preflight, upload, (check), switch, (migrate), restart with health, finish
        assert entry["commands"] == (7 if host == migration_host else 5), entry


def test_status_over_ssh_agrees_with_the_ledger_and_shows_every_state(app):
    code, report, _ = deploy_cli(app)  # a current release without migration files
    assert code == 0
    app.repo.commit(
        {
            "migrations/202601010000_create_things.py": CREATE_THINGS,
            "migrations/202601010010_kept.py": THIRD.replace("third", "kept"),
            "migrations/202601010050_gone.py": THIRD.replace("third", "gone"),
            "migrations/202601010100_boom.py": BOOM,
        }
    )
    code, report, _ = deploy_cli(app)
    failed_release = report["release"]
    assert code == 1

    status = app.invoke("datamig.status", "--json", "--release", failed_release)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    states = {m["version"]: m["state"] for m in data["migrations"]}
    assert states == {
        "202601010000": "applied",
        "202601010010": "applied",
        "202601010050": "applied",
        "202601010100": "failed",
    }
    assert data["pending"] == 1
    boom = next(m for m in data["migrations"] if m["state"] == "failed")
    assert "boom" in boom["error"]
    applied = {r["version"]: r for r in ledger(app)}
    assert set(applied) == {"202601010000", "202601010010", "202601010050"}
    for entry in data["migrations"]:
        if entry["state"] == "applied":
            assert applied[entry["version"]]["release"] == entry["release"] == failed_release

    # inside current (no migration files there): what the ledger applied is missing, and the
    # failed attempt of the rolled-back release is still shown
    current = app.invoke("datamig.status", "--json")
    assert current.returncode == 0, current.stderr
    states = {m["version"]: m for m in json.loads(current.stdout)["migrations"]}
    assert {v: m["state"] for v, m in states.items()} == {
        "202601010000": "missing",
        "202601010010": "missing",
        "202601010050": "missing",
        "202601010100": "failed",
    }
    assert states["202601010100"]["release"] == failed_release
    assert "boom" in states["202601010100"]["error"]

    # every state at once: edit an applied file, delete another, add one after the failing one
    app.repo.commit(
        {
            "migrations/202601010000_create_things.py": CREATE_THINGS + "# edited\n",
            "migrations/202601010050_gone.py": None,
            "migrations/202601010300_later.py": THIRD.replace("third", "later"),
        }
    )
    code, report, _ = deploy_cli(app)
    assert code == 1  # boom fails again; later never runs
    table = app.invoke("datamig.status", "--release", report["release"])
    assert table.returncode == 0, table.stderr
    for state in ("applied", "pending", "failed", "changed", "missing"):
        assert state in table.stdout, table.stdout
    data = json.loads(app.invoke("datamig.status", "--json", "--release", report["release"]).stdout)
    assert {m["version"]: m["state"] for m in data["migrations"]} == {
        "202601010000": "changed",
        "202601010010": "applied",
        "202601010050": "missing",
        "202601010100": "failed",
        "202601010300": "pending",
    }


def test_dry_run_changes_nothing_and_lists_pending_migrations(app):
    app.repo.commit({"migrations/202601010000_create_things.py": CREATE_THINGS})
    assert deploy_cli(app)[0] == 0
    app.repo.commit(
        {f"migrations/{FLAGS}": FLAGS_SOURCE, "migrations/202601010100_third.py": THIRD}
    )
    before_hosts, before_ledger = app.snapshot(), ledger(app)
    completed = app.invoke("deploy", "--dry-run", "--json")
    assert completed.returncode == 0, completed.stderr
    plan = json.loads(completed.stdout)
    assert plan["pending_migrations"] == [
        "202002111319_migrate_flags_to_redis",
        "202601010100_third",
    ]
    assert "migrate" in plan["phases"] and [h["host"] for h in plan["hosts"]] == app.names
    human = app.invoke("deploy", "--dry-run")
    assert human.returncode == 0 and "202601010100_third" in human.stdout
    assert app.snapshot() == before_hosts and ledger(app) == before_ledger
    assert redis.Redis.from_url(app.facts["redis_url"]).dbsize() == 0


def test_bad_migration_names_stop_the_build_before_any_connection(app):
    app.repo.commit({"migrations/2026_bad-name.py": "def run(ctx):\n    pass\n"})
    before = app.snapshot()
    # an unreachable host: the build must fail before any connection is tried
    hosts = [*app.entries, {"host": "root@127.0.0.9:1", "root": "/nowhere"}]
    code, _report, stderr = deploy_cli(app, hosts=hosts)
    assert code == 2, stderr
    assert "2026_bad-name.py" in stderr and "127.0.0.9" not in stderr
    assert app.snapshot() == before


def test_the_check_step_refuses_a_python_without_deploytools(app):
    assert deploy_cli(app)[0] == 0
    app.repo.commit({"migrations/202601010000_create_things.py": CREATE_THINGS})
    before = app.snapshot()
    entries = [dict(entry, python="/usr/bin/python3 -I -S") for entry in app.entries]
    code, _report, stderr = deploy_cli(app, hosts=entries)
    assert code == 2, stderr  # bad configuration, found before any host changed
    assert "did not start" in stderr and "deploytools" in stderr and "deploy.python" in stderr
    assert app.snapshot() == before and ledger_exists(app) is False


def ledger_exists(fleet) -> bool:
    engine = sa.create_engine(fleet.facts["pg_url"])
    try:
        with engine.connect() as db:
            return sa.inspect(db).has_table("data_migrations")
    finally:
        engine.dispose()


def test_rollback_with_revert_migrations(app):
    app.repo.commit({"migrations/202601010000_create_things.py": CREATE_THINGS})
    first = deploy_cli(app)[1]["release"]
    app.repo.commit({"migrations/202601010200_third.py": THIRD})
    second = deploy_cli(app)[1]["release"]
    assert things(app) == ["first", "third"]

    completed = app.invoke("rollback", "--revert-migrations", "--json")
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    assert answer["release"] == first and answer["previous"] == second
    assert [m["version"] for m in answer["reverted"]["reverted"]] == ["202601010200"]
    assert things(app) == ["first"] and [r["version"] for r in ledger(app)] == ["202601010000"]
    assert set(app.currents().values()) == {first}


def test_rollback_refuses_a_migration_without_revert_before_any_change(app):
    app.repo.commit({"migrations/202601010000_create_things.py": CREATE_THINGS})
    deploy_cli(app)
    app.repo.commit({"migrations/202601010100_no_revert.py": BOOM.replace("raise", "return  #")})
    second = deploy_cli(app)[1]["release"]
    before_hosts, before_ledger = app.snapshot(), ledger(app)
    completed = app.invoke("rollback", "--revert-migrations")
    assert completed.returncode == 2, completed.stderr
    assert "202601010100" in completed.stderr and "no_revert" in completed.stderr
    assert app.snapshot() == before_hosts and ledger(app) == before_ledger
    assert set(app.currents().values()) == {second}


def test_datamig_apply_over_ssh_runs_what_current_has_pending(app):
    app.repo.commit({"migrations/202601010000_create_things.py": CREATE_THINGS})
    release = deploy_cli(app)[1]["release"]
    # make it pending again, as a person would on the host
    reverted = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploytools.datamig",
            "revert",
            "202601010000",
            "--json",
            "--database-url",
            app.facts["pg_url"],
        ],
        cwd=app.root(app.names[0]) / "current",
        capture_output=True,
        text=True,
    )
    assert reverted.returncode == 0, reverted.stderr
    assert ledger(app) == [] and things(app) == []

    completed = app.invoke("datamig.apply", "--json")
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    assert [m["version"] for m in answer["applied"]] == ["202601010000"]
    assert [(r["version"], r["release"]) for r in ledger(app)] == [("202601010000", release)]
    again = json.loads(app.invoke("datamig.apply", "--json").stdout)
    assert again["applied"] == [] and again["pending_before"] == 0
    human = app.invoke("datamig.apply")
    assert human.returncode == 0 and "nothing to apply" in human.stdout


RECORD_CURRENT = '''"""Record where current points while it runs (the expand step of a deploy)."""
import os
import pathlib

import sqlalchemy as sa

phase = "before_switch"


def run(ctx):
    current = pathlib.Path.cwd().parent.parent / "current"
    seen = os.readlink(current).rsplit("/", 1)[-1] if current.is_symlink() else "none"
    ctx.db.execute(sa.text("CREATE TABLE seen (release text, current text)"))
    ctx.db.execute(
        sa.text("INSERT INTO seen VALUES (:r, :c)"), {"r": ctx.release, "c": seen}
    )
'''

LATE_BOOM = '''"""Runs once the new code is live and healthy; fails."""
phase = "after_restart"


def run(ctx):
    raise RuntimeError("late boom: the contract step failed")
'''


def test_before_switch_migrations_run_while_the_old_code_is_live(app):
    _code, report, _ = deploy_cli(app)
    previous = report["release"]
    app.repo.commit({"migrations/202601010000_record_current.py": RECORD_CURRENT})
    code, report, stderr = deploy_cli(app)
    assert code == 0, stderr
    engine = sa.create_engine(app.facts["pg_url"])
    with engine.connect() as db:
        rows = db.execute(sa.text("SELECT release, current FROM seen")).all()
    engine.dispose()
    assert rows == [(report["release"], previous)]  # the old release was current meanwhile
    assert set(app.currents().values()) == {report["release"]}
    assert report["migrations"]["phases"]["before_switch"] == ["202601010000_record_current"]


def test_a_failing_before_switch_migration_switches_nothing(app):
    _code, report, _ = deploy_cli(app)
    previous = report["release"]
    app.repo.commit({"migrations/202601010000_boom.py": BOOM + '\nphase = "before_switch"\n'})
    before = app.snapshot()
    code, report, stderr = deploy_cli(app)
    assert code == 1, stderr
    assert "202601010000_boom" in report["error"]
    assert set(app.currents().values()) == {previous}
    assert app.snapshot() == before
    assert ledger(app) == []


def test_a_failing_after_restart_migration_leaves_the_new_code_live(app):
    deploy_cli(app)
    app.repo.commit(
        {
            "migrations/202601010000_create_things.py": CREATE_THINGS,
            "migrations/202601010100_late_boom.py": LATE_BOOM,
        }
    )
    code, report, stderr = deploy_cli(app, health_cmd="true")
    assert code == 4, stderr
    assert "202601010100_late_boom" in report["error"] and "stays live" in report["error"]
    assert report["status"] == "succeeded"
    assert set(app.currents().values()) == {report["release"]}
    assert [r["version"] for r in ledger(app)] == ["202601010000"]
    assert not any(app.locked(host) for host in app.names)


def test_deploy_prints_the_runners_warnings(app):
    app.repo.commit({"migrations/202601010000_create_things.py": CREATE_THINGS})
    assert deploy_cli(app)[0] == 0
    app.repo.commit(
        {
            "migrations/202601010000_create_things.py": CREATE_THINGS + "# edited after\n",
            "migrations/202501010000_late_arrival.py": THIRD.replace("third", "late"),
        }
    )
    code, report, stderr = deploy_cli(app)
    assert code == 0, stderr
    assert "202601010000" in stderr and "changed" in stderr  # edited after it was applied
    assert "out of order" in stderr  # a version below the newest applied one
    assert any("changed" in w for w in report["warnings"])
    app.repo.bump()  # a new release id: the same commit in the same second would be taken
    dry = app.invoke("deploy", "--dry-run")
    assert "changed" in dry.stderr


USES_THE_RELEASE = '''"""Imports a module of the release itself."""
import sqlalchemy as sa

from app_settings import GREETING


def run(ctx):
    ctx.db.execute(sa.text("CREATE TABLE greetings (text text)"))
    ctx.db.execute(sa.text("INSERT INTO greetings VALUES (:text)"), {"text": GREETING})
'''


def logging_python(tmp_path: Path, *, reject_await: bool = False) -> Path:
    """A deploy.python that logs where each runner starts (and may play a runner that
    predates early sessions, rejecting their flag), then runs the real one."""
    log = tmp_path / "runner-starts.log"
    script = tmp_path / "python"
    reject = (
        'case " $* " in *" --await-release "*) '
        'echo "usage: datamig: error: unrecognized arguments: --await-release" >&2; exit 2;; '
        "esac\n"
        if reject_await
        else ""
    )
    script.write_text(
        f'#!/bin/sh\nprintf "%s %s\\n" "$PWD" "$*" >> {log}\n{reject}exec {sys.executable} "$@"\n'
    )
    script.chmod(0o755)
    return script


def greetings(fleet) -> list[str]:
    engine = sa.create_engine(fleet.facts["pg_url"])
    try:
        with engine.connect() as db:
            return [row[0] for row in db.execute(sa.text("SELECT text FROM greetings"))]
    finally:
        engine.dispose()


@pytest.mark.parametrize("older_runner", [False, True], ids=["early", "older-runner"])
def test_the_runner_starts_during_the_upload_and_imports_from_the_release(
    app, tmp_path, older_runner
):
    """Without an environment to build, the runner starts while the release uploads (in the
    root: the release is not there yet) and enters it for the check; a migration importing the
    release's own module works. A runner that rejects the early start is started the usual
    way, in the release, and the deploy is the same."""
    python = logging_python(tmp_path, reject_await=older_runner)
    app.repo.commit(
        {
            "app_settings.py": "GREETING = 'hello from the release'\n",
            "migrations/202601010000_uses_the_release.py": USES_THE_RELEASE,
        }
    )
    entries = [dict(entry, python=str(python)) for entry in app.entries]
    code, report, stderr = deploy_cli(app, hosts=entries)
    assert code == 0, stderr
    assert greetings(app) == ["hello from the release"]
    assert [m["name"] for m in report["migrations"]["applied"]] == ["uses_the_release"]
    root = str(app.root(app.names[0]))
    log = (tmp_path / "runner-starts.log").read_text()
    starts = [line.split(" ", 1) for line in log.splitlines()]
    sessions = [where for where, argv in starts if " session " in f" {argv} "]
    release_dir = f"{root}/releases/{report['release']}"
    if older_runner:  # the early one refused its flag; the usual one ran in the release
        assert sessions == [root, release_dir]
    else:
        assert sessions == [root]


def runners_left(root: Path) -> list[str]:
    """The runner sessions still running for ``root`` (its path is on their command line)."""
    found = subprocess.run(["pgrep", "-af", f"datamig session .*{root}"], capture_output=True)
    return found.stdout.decode().splitlines()


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_deploy_stopped_after_the_upload_ends_the_early_runner_having_done_nothing(
    app, tmp_path, signal_name
):
    """The runner started during the upload waits for its release: a deploy that stops
    before the check (cancelled, or killed: its connection closes) leaves it nothing to do but
    exit, and the ledger untouched."""
    python = logging_python(tmp_path)
    entries = [dict(entry, python=str(python)) for entry in app.entries]
    assert deploy_cli(app, hosts=entries)[0] == 0
    app.repo.commit({"migrations/202601010000_create_things.py": CREATE_THINGS})
    before = app.currents()
    completed = app.invoke(
        "deploy", hosts=entries, env={"DEPLOYTOOLS_FAULT": f"after:upload:{signal_name}"}
    )
    assert completed.returncode != 0
    assert "session" in (tmp_path / "runner-starts.log").read_text()  # it had started
    root = app.root(app.names[0])
    for _ in range(100):  # a killed deployer's connection closes: the runner reads its end
        if not runners_left(root):
            break
        time.sleep(0.1)
    assert runners_left(root) == []
    assert ledger_exists(app) is False and things(app) == []
    assert app.currents() == before
    # the next deploy (recovering the killed one's locks first) applies it, once
    code, report, stderr = deploy_cli(app, hosts=entries)
    assert code == 0, stderr
    assert [m["name"] for m in report["migrations"]["applied"]] == ["create_things"]
    assert things(app) == ["first"]
