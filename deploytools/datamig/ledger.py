"""The ledger: which migrations ran, when, from which release, and every attempt's outcome.

Two tables, SQLAlchemy 2 Core, on PostgreSQL (``DATABASE_URL``) or on the embedded SQLite file
``<root>/shared/datamig.sqlite3``:

- ``data_migrations``: one row per applied migration. It is written in the migration's own
  transaction, so the migration's database changes and its "applied" mark commit together or
  not at all.
- ``data_migration_attempts``: history of every apply, failure and revert, with the error text.

Times are stored and returned as timezone-aware UTC. Rows are keyed by the padded version
(:func:`~deploytools.datamig.discovery.pad_version`), the identity of a migration.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from deploytools.datamig.discovery import pad_version
from deploytools.exceptions import UsageError
from deploytools.redact import display_url

SQLITE_FILE = "datamig.sqlite3"
APPLIED, FAILED, REVERTED = "applied", "failed", "reverted"


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that goes in and comes out as aware UTC, on SQLite too (which keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("ledger times must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

data_migrations = sa.Table(
    "data_migrations",
    metadata,
    sa.Column("version", sa.String(14), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("checksum", sa.String(64), nullable=False),
    sa.Column("applied_at", UTCDateTime(), nullable=False),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("release", sa.String(255), nullable=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("applied_by", sa.String(255), nullable=False),
    sa.Column("out_of_order", sa.Boolean, nullable=False, default=False),
)

data_migration_attempts = sa.Table(
    "data_migration_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.String(14), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # applied | failed | reverted
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("release", sa.String(255), nullable=True),
    sa.Column("host", sa.String(255), nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def this_host() -> str:
    return socket.gethostname()


def this_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@dataclass(frozen=True)
class LedgerDatabase:
    """Where the ledger lives: a SQLAlchemy URL, and for SQLite the database file."""

    url: str
    sqlite_path: Path | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.sqlite_path is not None

    @property
    def display(self) -> str:
        """The URL without its password, for messages."""
        return display_url(self.url)


def normalize_url(url: str) -> str:
    """PostgreSQL URLs go through psycopg 3 whatever their spelling (``postgres://`` as Heroku
    writes it, ``postgresql://``); other URLs are returned unchanged."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in {"postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"}:
        return f"postgresql+psycopg://{rest}"
    return url


def ledger_database(database_url: str | None, root: Path | None) -> LedgerDatabase:
    """The ledger for ``database_url`` (PostgreSQL or ``sqlite:///FILE``), else the embedded
    SQLite file under ``root``; with neither, a UsageError that says how to configure one."""
    if database_url:
        url = normalize_url(database_url.strip())
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise UsageError(
                f"DATABASE_URL {display_url(url)!r} is not a database URL; expected "
                "postgresql+psycopg://user:password@host:5432/dbname"
            ) from None
        backend = parsed.get_backend_name()
        if backend == "postgresql":
            return LedgerDatabase(url)
        if backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise UsageError("a SQLite ledger needs a file: sqlite:////path/to/ledger.sqlite3")
            return LedgerDatabase(url, Path(parsed.database).absolute())
        raise UsageError(
            f"the ledger database must be PostgreSQL or SQLite, not {backend!r} "
            f"({display_url(url)})"
        )
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise UsageError(
                f"the deploy root {root} does not exist; pass --root <deploy root> "
                "(the folder holding releases/ and shared/)"
            )
        path = root.resolve() / "shared" / SQLITE_FILE
        return LedgerDatabase(f"sqlite:///{path}", path)
    raise UsageError(
        "no ledger database: set DATABASE_URL (e.g. in <root>/shared/.env, read with "
        "--env-file) or pass --database-url, or pass --root to use the embedded SQLite ledger "
        f"at <root>/shared/{SQLITE_FILE}"
    )


def application_name() -> str:
    """Shown in ``pg_stat_activity``; the lock reports it to name the holder of the lock."""
    # PostgreSQL keeps 63 bytes: shorten the host name, never the pid.
    pid = f" pid={os.getpid()}"
    prefix = "deploytools-datamig host="
    return prefix + this_host()[: 63 - len(prefix) - len(pid)] + pid


def create_engine(database: LedgerDatabase) -> Engine:
    """An engine without a pool: the runner is short-lived, and a pooled session would keep
    session-level state (such as an advisory lock) alive after ``close()``.

    On SQLite, SQLAlchemy emits BEGIN itself so that DDL and SELECTs inside a migration are
    part of its transaction too (the sqlite3 module's legacy mode would autocommit them).
    """
    if database.is_sqlite:
        engine = sa.create_engine(database.url, poolclass=NullPool, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN")

        return engine
    return sa.create_engine(
        database.url,
        poolclass=NullPool,
        connect_args={"application_name": application_name(), "connect_timeout": 10},
    )


def tables_exist(conn: Connection) -> bool:
    """Whether both ledger tables exist (``status`` must not create them)."""
    inspector = sa.inspect(conn)
    return all(inspector.has_table(table.name) for table in metadata.sorted_tables)


def create_tables(conn: Connection) -> None:
    """Create the ledger tables that are missing; call it while holding the runner lock."""
    metadata.create_all(conn, checkfirst=True)


@dataclass(frozen=True)
class AppliedRow:
    """A ``data_migrations`` row."""

    version: str
    name: str
    checksum: str
    applied_at: datetime
    duration_ms: int
    release: str | None
    host: str
    applied_by: str
    out_of_order: bool

    @property
    def sort_key(self) -> str:
        return pad_version(self.version)


@dataclass(frozen=True)
class Attempt:
    """A ``data_migration_attempts`` row."""

    version: str
    name: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    release: str | None
    host: str


def applied_rows(conn: Connection) -> dict[str, AppliedRow]:
    """Applied migrations by padded version."""
    rows = conn.execute(sa.select(data_migrations)).mappings()
    applied = (AppliedRow(**row) for row in rows)
    return {row.sort_key: row for row in applied}


def last_attempts(conn: Connection) -> dict[str, Attempt]:
    """The latest attempt of each version, by padded version."""
    t = data_migration_attempts
    latest = sa.select(sa.func.max(t.c.id)).group_by(t.c.version).scalar_subquery()
    rows = conn.execute(
        sa.select(*(c for c in t.c if c.name != "id")).where(t.c.id.in_(latest)).order_by(t.c.id)
    ).mappings()
    return {pad_version(row["version"]): Attempt(**row) for row in rows}


# The ledger's writes share the migration's connection, and in SQLAlchemy 2
# ``ctx.db.execution_options(yield_per=N)`` changes that connection in place: without these
# per-execution options the INSERT would go through a server-side cursor and fail on PostgreSQL.
_WRITE_OPTIONS = {"stream_results": False, "yield_per": None}


def insert_applied(conn: Connection, row: AppliedRow) -> None:
    conn.execute(
        sa.insert(data_migrations).values(**row.__dict__), execution_options=_WRITE_OPTIONS
    )


def delete_applied(conn: Connection, version: str) -> None:
    conn.execute(
        sa.delete(data_migrations).where(data_migrations.c.version == version),
        execution_options=_WRITE_OPTIONS,
    )


def insert_attempt(conn: Connection, attempt: Attempt) -> None:
    conn.execute(
        sa.insert(data_migration_attempts).values(**attempt.__dict__),
        execution_options=_WRITE_OPTIONS,
    )
