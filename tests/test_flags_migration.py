"""The example migration from the article: feature_flags rows -> the Redis hash feature_flags,
each flag published once per run on the feature_flags channel."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from deploytools.datamig import ledger, runner
from deploytools.datamig.context import MigrationContext, RedisConnector
from deploytools.testing import load_migration

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
FLAGS = MIGRATIONS / "202002111319_migrate_flags_to_redis.py"
VERSION = "202002111319"


def fill_feature_flags(engine: sa.Engine, rows: int) -> dict[bytes, bytes]:
    """Create and fill the table (flag_000001 ..., every third enabled); returns what Redis
    should then hold."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE feature_flags (name TEXT PRIMARY KEY, enabled BOOLEAN)"))
        if engine.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "INSERT INTO feature_flags SELECT 'flag_' || lpad(i::text, 6, '0'), i % 3 = 0 "
                    "FROM generate_series(1, :n) AS i"
                ),
                {"n": rows},
            )
        else:
            conn.execute(
                sa.text("INSERT INTO feature_flags VALUES (:name, :enabled)"),
                [{"name": f"flag_{i:06d}", "enabled": i % 3 == 0} for i in range(1, rows + 1)],
            )
    return {f"flag_{i:06d}".encode(): b"1" if i % 3 == 0 else b"0" for i in range(1, rows + 1)}


class Subscriber:
    """Collects the messages of the feature_flags channel while migrations run."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe("feature_flags")
        assert self.pubsub.get_message(timeout=5) is None  # the confirmation is skipped

    def messages(self) -> list[bytes]:
        """Every message published since the last call: read up to a marker published now, so
        nothing depends on timing."""
        self.client.publish("feature_flags", "__end__")
        received = []
        for message in self.pubsub.listen():
            if message["data"] == b"__end__":
                return received
            received.append(message["data"])
        raise AssertionError("the subscription ended")

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


def run_again(database: ledger.LedgerDatabase, redis_url: str) -> int:
    """Run the migration's run(ctx) once more, outside the ledger; returns peak traced bytes."""
    module = load_migration(FLAGS)
    engine = ledger.create_engine(database)
    connector = RedisConnector(redis_url)
    tracemalloc.start()
    try:
        with engine.begin() as conn:
            module.run(
                MigrationContext(
                    db=conn,
                    redis_connector=connector,
                    log=logging.getLogger("test"),
                    release=None,
                    version=VERSION,
                    name="migrate_flags_to_redis",
                )
            )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        connector.close()
        engine.dispose()


@pytest.mark.parametrize(("kind", "rows"), [("postgresql", 100_000), ("sqlite", 5_000)])
def test_flags_copied_exactly_idempotent_and_reverted(kind, rows, request, tmp_path, redis_url):
    if kind == "postgresql":
        settings = runner.Settings(
            path=MIGRATIONS, database_url=request.getfixturevalue("pg_url"), redis_url=redis_url
        )
    else:
        (tmp_path / "shared").mkdir()
        settings = runner.Settings(path=MIGRATIONS, root=tmp_path, redis_url=redis_url)
    database = ledger.ledger_database(settings.database_url, settings.root)
    engine = ledger.create_engine(database)
    expected = fill_feature_flags(engine, rows)
    engine.dispose()
    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    subscriber = Subscriber(redis_url)
    announced = sorted(name + b"=" + value for name, value in expected.items())

    result = runner.apply(settings)

    assert result.ok and [d.version for d in result.applied] == [VERSION]
    assert client.keys("*") == [b"feature_flags"]
    assert client.hgetall("feature_flags") == expected
    assert sorted(subscriber.messages()) == announced  # every flag, exactly once
    # Batched: one HSET per 1,000 flags, never one round trip per flag.
    hset_calls = client.info("commandstats")["cmdstat_hset"]["calls"]
    assert hset_calls == -(-rows // 1000)

    peak = run_again(database, redis_url)  # a second run changes nothing but notifies again
    assert client.keys("*") == [b"feature_flags"]
    assert client.hgetall("feature_flags") == expected
    assert sorted(subscriber.messages()) == announced
    subscriber.close()
    if kind == "postgresql":
        # Streamed: loading 100,000 rows into a list would take well over 10 MB.
        assert peak < 4_000_000, f"peak {peak} bytes while copying {rows} flags"

    client.hset("feature_flags", "someone_elses_flag", "1")
    reverted = runner.revert(settings, VERSION)

    assert [d.version for d in reverted.reverted] == [VERSION]
    assert client.hgetall("feature_flags") == {b"someone_elses_flag": b"1"}
    assert [m.state for m in runner.status(settings).migrations] == ["pending"]
    client.close()
