"""``ctx.batches``: committed, resumable batches, against real PostgreSQL, SQLite and Redis.

The kill is deterministic: the migration touches a marker file after a given batch and waits;
the test then SIGKILLs the runner's whole process group and runs it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
import test_datamig_runner as base
from test_datamig_runner import clean_env, cli, write

from deploytools.datamig import batches, runner

backend = base.backend  # fixtures: PostgreSQL and SQLite ledgers, a release directory
release = base.release

ROWS = 1000
RUNNER = [sys.executable, "-m", "deploytools.datamig"]

BACKFILL = '''"""Counts every item once in the database, and its work in Redis."""
import os
import pathlib
import time

import sqlalchemy as sa

items = sa.table("items", sa.column("id"), sa.column("processed"))
STOP_AFTER = {stop_after}


def run(ctx):
    walk = ctx.batches(sa.select(items.c.id), key=items.c.id, size={size})
    for number, batch in enumerate(walk, start=1):
        ids = [row.id for row in batch]
        ctx.db.execute(
            sa.update(items).where(items.c.id.in_(ids)).values(processed=items.c.processed + 1)
        )
        ctx.redis.incrby("work", len(ids))
        marker = pathlib.Path({marker!r})
        if number == STOP_AFTER and not marker.exists():
            marker.write_text(str(os.getpid()))
            {then}
'''


def make_items(backend, rows: int = ROWS) -> None:
    engine = backend.engine()
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE items (id INTEGER PRIMARY KEY, processed INTEGER)"))
        conn.execute(
            sa.text("INSERT INTO items (id, processed) VALUES (:id, 0)"),
            [{"id": i} for i in range(1, rows + 1)],
        )
    engine.dispose()


def processed_counts(backend) -> dict[int, int]:
    rows = backend.query("SELECT processed, COUNT(*) FROM items GROUP BY processed")
    return dict(rows)


def wait_for(path, process, timeout=60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_killed_backfill_resumes_after_its_last_committed_batch(
    backend, release, redis_url, tmp_path
):
    make_items(backend)
    marker = tmp_path / "stopped"
    write(
        release / "migrations",
        "202001010000_backfill.py",
        BACKFILL.format(stop_after=4, size=100, marker=str(marker), then="time.sleep(120)"),
    )
    env = clean_env(REDIS_URL=redis_url)
    process = subprocess.Popen(
        [*RUNNER, "apply", "--json", *backend.cli_args()],
        cwd=release,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as the deploy starts it (setsid)
    )
    wait_for(marker, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    work = redis.Redis.from_url(redis_url)
    assert int(work.get("work")) == 400  # four batches done outside the database

    # Three batches committed with their checkpoint; the fourth was rolled back.
    assert processed_counts(backend) == {1: 300, 0: 700}
    status = json.loads(cli("status", "--json", *backend.cli_args(), cwd=release).stdout)
    [line] = status["migrations"]
    assert line["state"] == "interrupted"
    assert line["progress"]["rows_done"] == 300 and line["progress"]["last_key"] == [300]
    assert line["progress"]["eta_s"] is not None
    assert backend.query("SELECT version FROM data_migrations") == []

    again = cli("apply", "--json", *backend.cli_args(), cwd=release, env=env)

    assert again.returncode == 0, again.stderr
    assert [d["name"] for d in json.loads(again.stdout)["applied"]] == ["backfill"]
    assert "resuming after key [300] (300 rows done)" in again.stderr
    assert processed_counts(backend) == {1: ROWS}, "a row was processed twice or never"
    assert int(work.get("work")) - ROWS <= 100, "more than one batch redone outside the database"
    assert backend.query("SELECT COUNT(*) FROM data_migration_checkpoints") == [(0,)]
    statuses = backend.query("SELECT status FROM data_migration_attempts ORDER BY id")
    assert statuses == [("interrupted",), ("applied",)]
    assert "progress 202001010000_backfill: 1,000 of 1,000 rows (100%)" in again.stderr


def test_a_backfill_that_raised_resumes_on_the_next_run(backend, release, redis_url, tmp_path):
    make_items(backend)
    marker = tmp_path / "raised"
    folder = release / "migrations"
    write(
        folder,
        "202001010000_backfill.py",
        BACKFILL.format(
            stop_after=5, size=100, marker=str(marker), then="raise RuntimeError('lost it')"
        ),
    )
    settings = backend.settings(folder, redis_url=redis_url)

    first = runner.apply(settings)

    assert first.failed is not None and first.failed.error == "RuntimeError: lost it"
    assert processed_counts(backend) == {1: 400, 0: 600}
    [line] = runner.status(settings).migrations
    assert line.state == "failed" and line.progress.rows_done == 400
    assert line.progress.last_key == [400]

    second = runner.apply(settings)

    assert second.ok, second.failed
    assert processed_counts(backend) == {1: ROWS}
    assert int(redis.Redis.from_url(redis_url).get("work")) == ROWS + 100


def test_pause_sleeps_between_full_batches(backend, release, monkeypatch, redis_url):
    make_items(backend, rows=10)
    write(
        release / "migrations",
        "202001010000_throttled.py",
        """
        import sqlalchemy as sa

        items = sa.table("items", sa.column("id"), sa.column("processed"))

        def run(ctx):
            for batch in ctx.batches(sa.select(items.c.id), key=items.c.id, size=3, pause=0.25):
                ids = [row.id for row in batch]
                ctx.db.execute(sa.update(items).where(items.c.id.in_(ids)).values(processed=1))
        """,
    )
    pauses: list[float] = []
    monkeypatch.setattr(batches, "_sleep", pauses.append)

    result = runner.apply(backend.settings(release / "migrations"))

    assert result.ok, result.failed
    assert pauses == [0.25, 0.25, 0.25]  # after batches of 3, 3 and 3; none after the last 1
    assert processed_counts(backend) == {1: 10}


def test_composite_and_datetime_keys_resume_exactly(backend, release, tmp_path):
    events = sa.Table(
        "events",
        sa.MetaData(),
        sa.Column("day", sa.DateTime, primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("processed", sa.Integer),
    )
    start = datetime(2024, 1, 1)
    engine = backend.engine()
    with engine.begin() as conn:
        events.create(conn)
        conn.execute(
            sa.insert(events),
            [
                {"day": start + timedelta(days=d), "seq": s, "processed": 0}
                for d in range(7)
                for s in range(5)
            ],
        )
    engine.dispose()
    marker = tmp_path / "raised"
    write(
        release / "migrations",
        "202001010000_events.py",
        f"""
        import pathlib
        import sqlalchemy as sa

        meta = sa.MetaData()
        events = sa.Table(
            "events",
            meta,
            sa.Column("day", sa.DateTime),
            sa.Column("seq", sa.Integer),
            sa.Column("processed", sa.Integer),
        )

        def run(ctx):
            query = sa.select(events.c.day, events.c.seq)
            for n, batch in enumerate(ctx.batches(query, key=(events.c.day, events.c.seq), size=4)):
                for row in batch:
                    ctx.db.execute(
                        sa.update(events)
                        .where((events.c.day == row.day) & (events.c.seq == row.seq))
                        .values(processed=events.c.processed + 1)
                    )
                marker = pathlib.Path({str(marker)!r})
                if n == 3 and not marker.exists():
                    marker.touch()
                    raise RuntimeError("stop after four batches")
        """,
    )
    settings = backend.settings(release / "migrations")
    assert runner.apply(settings).failed
    [line] = runner.status(settings).migrations
    assert line.progress.rows_done == 12
    assert line.progress.last_key == ["2024-01-03T00:00:00", 1]
    assert runner.apply(settings).ok
    assert backend.query("SELECT processed, COUNT(*) FROM events GROUP BY processed") == [(1, 35)]


def test_two_walks_in_one_migration_resume_each(backend, release, tmp_path):
    make_items(backend, rows=50)
    marker = tmp_path / "raised"
    write(
        release / "migrations",
        "202001010000_two_walks.py",
        f"""
        import pathlib
        import sqlalchemy as sa

        items = sa.table("items", sa.column("id"), sa.column("processed"))

        def run(ctx):
            for step in (1, 10):
                walk = ctx.batches(sa.select(items.c.id), key=items.c.id, size=20, count=False)
                for n, batch in enumerate(walk):
                    ids = [row.id for row in batch]
                    ctx.db.execute(
                        sa.update(items).where(items.c.id.in_(ids))
                        .values(processed=items.c.processed + step)
                    )
                    marker = pathlib.Path({str(marker)!r})
                    if step == 10 and n == 1 and not marker.exists():
                        marker.touch()
                        raise RuntimeError("stop in the second walk")
        """,
    )
    settings = backend.settings(release / "migrations")
    assert runner.apply(settings).failed
    [line] = runner.status(settings).migrations
    assert line.progress.rows_done == 20 and line.progress.eta_s is None  # count=False
    assert runner.apply(settings).ok
    assert processed_counts(backend) == {11: 50}


def test_a_key_outside_the_select_is_a_clear_failure(backend, release):
    make_items(backend, rows=5)
    write(
        release / "migrations",
        "202001010000_bad_key.py",
        """
        import sqlalchemy as sa

        items = sa.table("items", sa.column("id"), sa.column("processed"))

        def run(ctx):
            for batch in ctx.batches(sa.select(items.c.processed), key=items.c.id):
                pass
        """,
    )
    result = runner.apply(backend.settings(release / "migrations"))
    assert "the key items.id is not a column of the select" in result.failed.error


@pytest.mark.parametrize("size", [0, -1, 2.5])
def test_a_bad_batch_size_is_a_clear_failure(size, backend, release):
    make_items(backend, rows=5)
    write(
        release / "migrations",
        "202001010000_bad_size.py",
        f"""
        import sqlalchemy as sa

        items = sa.table("items", sa.column("id"))

        def run(ctx):
            for batch in ctx.batches(sa.select(items.c.id), key=items.c.id, size={size!r}):
                pass
        """,
    )
    result = runner.apply(backend.settings(release / "migrations"))
    assert "size must be a whole number >= 1" in result.failed.error


def test_the_readme_backfill_example_runs(pg_url, redis_url, release, monkeypatch):
    """The worked example of README.md, "Writing a long migration", as written there."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Writing a long migration", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, quantity INTEGER, "
                "unit_cents INTEGER, total_cents INTEGER)"
            )
        )
        conn.execute(
            sa.text("INSERT INTO orders SELECT i, i % 7, 250, NULL FROM generate_series(1, 2500) i")
        )
    client = redis.Redis.from_url(redis_url)
    client.set("order:5:total", "stale")
    (release / "migrations" / "202401010000_fill_total_cents.py").write_text(example)
    pauses: list[float] = []
    settings = runner.Settings(
        path=release / "migrations", database_url=pg_url, redis_url=redis_url
    )
    monkeypatch.setattr(batches, "_sleep", pauses.append)
    result = runner.apply(settings)
    assert result.ok, result.failed
    with engine.connect() as conn:
        wrong = conn.execute(
            sa.text("SELECT count(*) FROM orders WHERE total_cents <> quantity * unit_cents")
        ).scalar()
    engine.dispose()
    assert wrong == 0 and client.get("order:5:total") is None
    assert pauses == [0.05, 0.05]  # after the two full batches of 1,000
    assert [m.phase for m in runner.status(settings).migrations] == ["after_restart"]
