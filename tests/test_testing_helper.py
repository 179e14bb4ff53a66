"""deploytools.testing.assert_idempotent: passes for idempotent migrations, catches the others."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from deploytools.datamig.context import TransactionControlError
from deploytools.testing import assert_idempotent, load_migration

FLAGS = (
    Path(__file__).resolve().parents[1] / "migrations" / "202002111319_migrate_flags_to_redis.py"
)


def create_flags(ctx) -> None:
    ctx.db.execute(sa.text("CREATE TABLE feature_flags (name TEXT PRIMARY KEY, enabled BOOLEAN)"))
    ctx.db.execute(
        sa.text("INSERT INTO feature_flags VALUES (:name, :enabled)"),
        [{"name": f"flag_{i}", "enabled": i % 2 == 0} for i in range(2500)],
    )


def write(tmp_path: Path, filename: str, body: str) -> Path:
    path = tmp_path / filename
    path.write_text(textwrap.dedent(body))
    return path


def test_the_flags_example_is_idempotent(pg_url, redis_url):
    state = assert_idempotent(
        FLAGS,
        database_url=pg_url,
        redis_url=redis_url,
        tables=["feature_flags"],
        setup=create_flags,
    )
    assert len(state["redis"][b"feature_flags"][1]) == 2500
    assert state["redis"][b"feature_flags"][0] == "hash"
    assert len(state["tables"]["feature_flags"]) == 2500


def test_a_counter_in_redis_is_caught(pg_url, redis_url, tmp_path):
    counter = write(
        tmp_path,
        "202001010000_count_deploys.py",
        """
        def run(ctx):
            ctx.redis.set("greeting", "hello")
            ctx.redis.incr("deploys")
        """,
    )
    with pytest.raises(AssertionError) as caught:
        assert_idempotent(counter, database_url=pg_url, redis_url=redis_url)
    message = str(caught.value)
    assert "202001010000_count_deploys.py is not idempotent" in message
    assert "redis b'deploys' after run 1" in message
    assert "-('string', b'1')" in message and "+('string', b'2')" in message
    assert "greeting" not in message  # only what differs is shown


def test_appended_rows_are_caught(tmp_path, redis_url):
    appender = write(
        tmp_path,
        "202001010000_log_the_migration.py",
        """
        from sqlalchemy import text

        def run(ctx):
            ctx.db.execute(text("INSERT INTO audit (event) VALUES ('migrated')"))
        """,
    )
    database_url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    with pytest.raises(AssertionError, match=r"tables 'audit' after run 1"):
        assert_idempotent(
            appender,
            database_url=database_url,
            tables=["audit"],
            setup=lambda ctx: ctx.db.execute(sa.text("CREATE TABLE audit (event TEXT)")),
        )


def test_every_redis_type_is_compared(pg_url, redis_url, tmp_path):
    idempotent = write(
        tmp_path,
        "202001010000_all_types.py",
        """
        def run(ctx):
            r = ctx.redis
            r.set("s", "v")
            r.hset("h", mapping={"a": "1"})
            r.sadd("set", "x", "y")
            r.zadd("z", {"m": 1.5})
            r.delete("l")
            r.rpush("l", "1", "2")
        """,
    )
    state = assert_idempotent(idempotent, database_url=pg_url, redis_url=redis_url)
    assert {key: kind for key, (kind, _) in state["redis"].items()} == {
        b"s": "string",
        b"h": "hash",
        b"set": "set",
        b"z": "zset",
        b"l": "list",
    }

    redis.Redis.from_url(redis_url).flushdb()
    pushes = write(
        tmp_path, "202001010001_push.py", "def run(ctx):\n    ctx.redis.rpush('l', 'x')\n"
    )
    with pytest.raises(AssertionError, match="redis b'l'"):
        assert_idempotent(load_migration(pushes), database_url=pg_url, redis_url=redis_url)


def test_a_migration_that_commits_fails_here_as_in_production(tmp_path, redis_url):
    committer = write(
        tmp_path,
        "202001010000_commits.py",
        """
        def run(ctx):
            ctx.db.commit()
        """,
    )
    with pytest.raises(TransactionControlError, match="a migration must not commit"):
        assert_idempotent(committer, database_url=f"sqlite:///{tmp_path / 'app.sqlite3'}")


def test_a_batched_migration_is_checked_in_one_transaction(tmp_path):
    batched = write(
        tmp_path,
        "202001010000_batched.py",
        """
        import sqlalchemy as sa

        items = sa.table("items", sa.column("id"), sa.column("doubled"))

        def run(ctx):
            for batch in ctx.batches(sa.select(items.c.id), key=items.c.id, size=7):
                ids = [row.id for row in batch]
                ctx.db.execute(
                    sa.update(items).where(items.c.id.in_(ids)).values(doubled=items.c.id * 2)
                )
        """,
    )

    def setup(ctx):
        ctx.db.execute(sa.text("CREATE TABLE items (id INTEGER PRIMARY KEY, doubled INTEGER)"))
        ctx.db.execute(
            sa.text("INSERT INTO items (id) VALUES (:id)"), [{"id": i} for i in range(50)]
        )

    state = assert_idempotent(
        batched,
        database_url=f"sqlite:///{tmp_path / 'app.sqlite3'}",
        tables=["items"],
        setup=setup,
    )
    assert state["tables"]["items"] == sorted(((i, i * 2) for i in range(50)), key=repr)
