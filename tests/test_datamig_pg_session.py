"""``ctx.db``'s PostgreSQL session: application_name, statement_timeout and lock_timeout."""

from __future__ import annotations

import json

import sqlalchemy as sa
import test_datamig_runner as base
from test_datamig_runner import cli, write

release = base.release


def test_session_settings_hold_for_the_whole_migration(pg_url, release):
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE seen (n INTEGER, app TEXT, st TEXT, lt TEXT)"))
        conn.execute(sa.text("CREATE TABLE items (id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO items VALUES (1), (2), (3)"))
    write(
        release / "migrations",
        "202001010000_records_its_session.py",
        """
        import sqlalchemy as sa

        items = sa.table("items", sa.column("id"))
        RECORD = sa.text(
            "INSERT INTO seen SELECT :n, current_setting('application_name'), "
            "current_setting('statement_timeout'), current_setting('lock_timeout')"
        )

        def run(ctx):
            for batch in ctx.batches(sa.select(items.c.id), key=items.c.id, size=1):
                ctx.db.execute(RECORD, {"n": batch[0].id})  # after each commit too
        """,
    )
    answer = cli(
        "apply",
        "--json",
        "--database-url",
        pg_url,
        "--statement-timeout",
        "2",
        "--pg-lock-timeout",
        "1.5",
        cwd=release,
    )
    assert answer.returncode == 0, answer.stderr
    with engine.connect() as conn:
        seen = conn.execute(sa.text("SELECT * FROM seen ORDER BY n")).all()
    engine.dispose()
    assert [tuple(row) for row in seen] == [
        (n, "deploytools-datamig", "2s", "1500ms") for n in (1, 2, 3)
    ]


def test_a_statement_past_statement_timeout_fails_the_migration(pg_url, release):
    write(
        release / "migrations",
        "202001010000_slow_query.py",
        "import sqlalchemy as sa\n\ndef run(ctx):\n"
        "    ctx.db.execute(sa.text('SELECT pg_sleep(30)'))\n",
    )
    answer = cli(
        "apply", "--json", "--database-url", pg_url, "--statement-timeout", "0.5", cwd=release
    )
    assert answer.returncode == 1, answer.stderr
    error = json.loads(answer.stdout)["failed"]["error"]
    assert error.startswith(
        "statement_timeout (0.5 s) reached in migration 202001010000_slow_query: "
        "canceling statement due to statement timeout"
    )
    assert "datamig.statement_timeout" in error


def test_a_lock_wait_past_pg_lock_timeout_fails_the_migration(pg_url, release):
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE busy (id INTEGER)"))
    write(
        release / "migrations",
        "202001010000_needs_the_lock.py",
        "import sqlalchemy as sa\n\ndef run(ctx):\n"
        "    ctx.db.execute(sa.text('LOCK TABLE busy IN ACCESS EXCLUSIVE MODE'))\n",
    )
    holder = engine.connect()
    holder.execute(sa.text("LOCK TABLE busy IN ACCESS SHARE MODE"))  # held until rollback
    try:
        answer = cli(
            "apply", "--json", "--database-url", pg_url, "--pg-lock-timeout", "0.3", cwd=release
        )
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    assert answer.returncode == 1, answer.stderr
    error = json.loads(answer.stdout)["failed"]["error"]
    assert error.startswith(
        "lock_timeout (0.3 s) reached in migration 202001010000_needs_the_lock: "
        "canceling statement due to lock timeout"
    )
