"""Helpers for the tests of an application's own data migrations.

A migration runs once per ledger, but a rerun after a partial failure (Redis written, database
rolled back) or a restored backup is how problems get fixed, so every migration should be
idempotent. :func:`assert_idempotent` proves it against a real database and Redis::

    from deploytools.testing import assert_idempotent

    def test_flags_migration_is_idempotent(pg_url, redis_url):
        assert_idempotent(
            "migrations/202002111319_migrate_flags_to_redis.py",
            database_url=pg_url,
            redis_url=redis_url,
            tables=["feature_flags"],
            setup=create_and_fill_feature_flags,
        )
"""

from __future__ import annotations

import difflib
import logging
import pprint
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa

from deploytools.datamig import ledger
from deploytools.datamig.context import MigrationConnection, MigrationContext, RedisConnector
from deploytools.datamig.discovery import (
    FILE_NAME,
    MigrationFile,
    load_module,
    parse_name,
    sha256_file,
)

__all__ = ["assert_idempotent", "load_migration", "snapshot"]

Snapshot = dict[str, Any]


def load_migration(migration: str | Path | ModuleType) -> ModuleType:
    """A migration module from its file path (loaded as the runner does), or the module itself."""
    if isinstance(migration, ModuleType):
        if not callable(getattr(migration, "run", None)):
            raise TypeError(f"{migration.__name__} has no run(ctx) function")
        return migration
    path = Path(migration)
    parsed = parse_name(path.name)
    return load_module(
        MigrationFile(parsed.version, parsed.name, path.name, path, sha256_file(path))
    )


def _identity(module: ModuleType) -> tuple[str, str]:
    """(version, name) from the module's file name, else ("", the module name)."""
    match = FILE_NAME.fullmatch(Path(getattr(module, "__file__", None) or "").name)
    return (match["version"], match["name"]) if match else ("", module.__name__)


def _redis_value(client: Any, key: bytes) -> tuple[str, Any]:
    kind = client.type(key).decode()
    if kind == "string":
        return kind, client.get(key)
    if kind == "hash":
        return kind, dict(sorted(client.hgetall(key).items()))
    if kind == "set":
        return kind, sorted(client.smembers(key))
    if kind == "zset":
        return kind, client.zrange(key, 0, -1, withscores=True)
    if kind == "list":
        return kind, client.lrange(key, 0, -1)
    if kind == "stream":
        return kind, client.xrange(key)
    return kind, None  # the key expired between SCAN and TYPE, or a module type


def _rows(conn: sa.Connection, table: str) -> list[tuple[Any, ...]]:
    reflected = sa.Table(table, sa.MetaData(), autoload_with=conn)
    rows = conn.execute(sa.select(reflected)).all()
    # No ORDER BY: row order is not state. Sort on the text form, which works for any type.
    return sorted((tuple(row) for row in rows), key=repr)


def snapshot(conn: sa.Connection, redis_client: Any | None, tables: Iterable[str]) -> Snapshot:
    """Every Redis key with its type and value, and the rows of ``tables`` (sorted)."""
    state: Snapshot = {"tables": {table: _rows(conn, table) for table in tables}}
    if redis_client is not None:
        keys = sorted(redis_client.scan_iter(count=1000))
        state["redis"] = {key: _redis_value(redis_client, key) for key in keys}
    return state


def _diff(first: Snapshot, second: Snapshot) -> str:
    lines = []
    for part in sorted(first.keys() | second.keys()):
        a, b = first.get(part, {}), second.get(part, {})
        for name in sorted(a.keys() | b.keys(), key=repr):
            if a.get(name) != b.get(name):
                lines.extend(
                    difflib.unified_diff(
                        pprint.pformat(a.get(name), width=100).splitlines(),
                        pprint.pformat(b.get(name), width=100).splitlines(),
                        fromfile=f"{part} {name!r} after run 1",
                        tofile=f"{part} {name!r} after run 2",
                        lineterm="",
                        n=2,
                    )
                )
    text = "\n".join(lines)
    return text if len(text) < 20_000 else text[:20_000] + "\n... (diff truncated)"


def _run_once(
    engine: sa.Engine,
    module: ModuleType,
    context: Callable[[sa.Connection], MigrationContext],
) -> None:
    """``run(ctx)`` in a transaction of its own that only the helper ends, as the runner does."""
    conn = MigrationConnection(engine)
    try:
        conn.begin()
        with conn.guarded():
            module.run(context(conn))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


def assert_idempotent(
    migration: str | Path | ModuleType,
    *,
    database_url: str,
    redis_url: str | None = None,
    tables: Iterable[str] = (),
    setup: Callable[[MigrationContext], None] | None = None,
    release: str | None = None,
) -> Snapshot:
    """Run ``migration``'s ``run(ctx)`` twice and raise AssertionError if the second run changed
    anything: every Redis key (strings, hashes, sets, sorted sets, lists, streams) of the
    ``redis_url`` database and every row of ``tables`` are compared after each run.

    ``migration`` is a migration file's path or an imported module. ``setup(ctx)``, if given,
    runs once before, in its own committed transaction (create and fill tables there). Each run
    gets a ``ctx`` like the runner's, in its own committed transaction: ``ctx.db`` refuses
    ``commit()`` as in production, and ``ctx.batches`` walks its query in one transaction (no
    checkpoints: no ledger is written). Returns the snapshot after the second run, for further
    assertions.
    """
    module = load_migration(migration)
    version, name = _identity(module)
    tables = list(tables)
    database = ledger.ledger_database(database_url, None)
    engine = ledger.create_engine(database)
    redis = RedisConnector(redis_url)
    log = logging.getLogger(f"deploytools.datamig.migrations.{version}_{name}")

    def context(conn: sa.Connection) -> MigrationContext:
        return MigrationContext(
            db=conn,
            redis_connector=redis,
            log=log,
            release=release,
            version=version,
            name=name,
        )

    try:
        if setup is not None:
            with engine.begin() as conn:
                setup(context(conn))
        snapshots = []
        for _ in range(2):
            _run_once(engine, module, context)
            with engine.connect() as conn:
                snapshots.append(snapshot(conn, redis.client if redis_url else None, tables))
    finally:
        redis.close()
        engine.dispose()
    first, second = snapshots
    if first != second:
        raise AssertionError(
            f"migration {getattr(module, '__file__', None) or module.__name__} is not "
            f"idempotent: the second run changed the state.\n{_diff(first, second)}"
        )
    return second
