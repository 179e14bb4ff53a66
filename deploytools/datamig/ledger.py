"""The ledger: which migrations ran, when, from which release, and every attempt's outcome.

Four tables, SQLAlchemy 2 Core, on PostgreSQL (``DATABASE_URL``) or on the embedded SQLite file
``<root>/shared/datamig.sqlite3``:

- ``data_migrations``: exactly the applied migrations, one row each. A row is written in the
  migration's own (last) transaction, so the migration's database changes and its "applied"
  mark commit together or not at all.
- ``data_migration_attempts``: every apply and revert attempt. A ``running`` row is committed
  before the migration starts and settled (``applied``, ``failed``, ``reverted``) when it ends;
  one still ``running`` when no runner holds the lock was killed (``interrupted``).
- ``data_migration_checkpoints``: where a batched migration (``ctx.batches``) got to: its last
  key and rows done, committed together with each batch's writes.
- ``data_migration_ledger``: one random id, the ledger's identity, created with the tables.

Times are stored and returned as timezone-aware UTC. Rows are keyed by the padded version
(:func:`~deploytools.datamig.discovery.pad_version`), the identity of a migration.
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from dataclasses import dataclass, field
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
#: Attempt statuses. ``running`` rows are committed before a migration starts.
APPLIED, FAILED, REVERTED, RUNNING, INTERRUPTED = (
    "applied",
    "failed",
    "reverted",
    "running",
    "interrupted",
)
#: ``application_name`` of ``ctx.db``'s session on PostgreSQL.
MIGRATION_APPLICATION_NAME = "deploytools-datamig"
URL_EXAMPLE = "postgresql+psycopg://user:password@host:5432/dbname"


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
    # running | applied | failed | reverted | interrupted
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("release", sa.String(255), nullable=True),
    sa.Column("host", sa.String(255), nullable=False),
)

data_migration_checkpoints = sa.Table(
    "data_migration_checkpoints",
    metadata,
    sa.Column("version", sa.String(14), primary_key=True),
    # the n-th ctx.batches() call of the migration (0 for the first), so one migration may
    # walk several queries
    sa.Column("walk", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("last_key", sa.Text, nullable=False),  # JSON list
    sa.Column("rows_done", sa.BigInteger, nullable=False),
    sa.Column("rows_total", sa.BigInteger, nullable=True),
    sa.Column("eta_s", sa.Float, nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("release", sa.String(255), nullable=True),
)

data_migration_ledger = sa.Table(
    "data_migration_ledger",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

#: The tables a ledger needs before anything can be read from it.
CORE_TABLES = (data_migrations, data_migration_attempts)


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
        """For people: the SQLite file, or the URL without its password."""
        if self.sqlite_path is not None:
            return str(self.sqlite_path)
        return display_url(self.url)


def normalize_url(url: str) -> str:
    """PostgreSQL URLs go through psycopg 3 whatever their spelling (``postgres://`` as Heroku
    writes it, ``postgresql://``); other URLs are returned unchanged."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in {"postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"}:
        return f"postgresql+psycopg://{rest}"
    return url


def _scheme(url: str) -> str:
    """The part before the first ``:``, for messages about a URL that must not be echoed."""
    scheme = url.partition(":")[0]
    return scheme if scheme.replace("+", "").isalnum() else "?"


def ledger_database(database_url: str | None, root: Path | None) -> LedgerDatabase:
    """The ledger for ``database_url`` (PostgreSQL or ``sqlite:////ABSOLUTE/FILE``), else the
    embedded SQLite file under ``root``; with neither, a UsageError that says how to configure
    one. Messages never echo a URL that could not be parsed: its password could not be masked.
    """
    if database_url:
        url = normalize_url(database_url.strip())
        if "://" not in url:
            raise UsageError(
                f"DATABASE_URL (scheme {_scheme(url)!r}) is not a URL SQLAlchemy can use: the "
                f"scheme must be followed by '://' (two slashes), as in {URL_EXAMPLE}"
            )
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            raise UsageError(
                f"DATABASE_URL {display_url(url)!r} is not a database URL; expected {URL_EXAMPLE}"
            ) from None
        backend = parsed.get_backend_name()
        if backend == "postgresql":
            return LedgerDatabase(url)
        if backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise UsageError("a SQLite ledger needs a file: sqlite:////path/to/ledger.sqlite3")
            if not Path(parsed.database).is_absolute():
                raise UsageError(
                    f"the SQLite ledger path {parsed.database!r} is relative: it would put the "
                    "ledger inside the release. Use an absolute path: "
                    "sqlite:////srv/app/shared/ledger.db (four slashes)"
                )
            return LedgerDatabase(url, Path(parsed.database))
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
    """Shown in ``pg_stat_activity`` for the runner's lock session: the lock reports it to name
    the holder of the lock. (``ctx.db``'s session is :data:`MIGRATION_APPLICATION_NAME`.)"""
    # PostgreSQL keeps 63 bytes: shorten the host name, never the pid.
    pid = f" pid={os.getpid()}"
    prefix = "deploytools-datamig host="
    return prefix + this_host()[: 63 - len(prefix) - len(pid)] + pid


def create_engine(database: LedgerDatabase) -> Engine:
    """An engine without a pool: the runner is short-lived, and a pooled session would keep
    session-level state (such as an advisory lock) alive after ``close()``. Bound parameters
    are never shown in errors (``hide_parameters``): they may hold anything a migration wrote.

    On SQLite, SQLAlchemy emits BEGIN itself so that DDL and SELECTs inside a migration are
    part of its transaction too (the sqlite3 module's legacy mode would autocommit them).
    """
    if database.is_sqlite:
        engine = sa.create_engine(
            database.url, poolclass=NullPool, hide_parameters=True, connect_args={"timeout": 30}
        )

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
        hide_parameters=True,
        connect_args={"application_name": application_name(), "connect_timeout": 10},
    )


def existing_tables(conn: Connection) -> set[str]:
    """The names of the ledger tables present (``status`` must not create any)."""
    present = set(sa.inspect(conn).get_table_names())
    return {table.name for table in metadata.sorted_tables if table.name in present}


def tables_exist(conn: Connection) -> bool:
    """Whether the ledger exists (its two core tables)."""
    return {t.name for t in CORE_TABLES} <= existing_tables(conn)


def create_tables(conn: Connection) -> str:
    """Create the ledger tables that are missing, and its identity on first creation; call it
    while holding the runner lock. Returns the ledger id."""
    metadata.create_all(conn, checkfirst=True)
    found = ledger_id(conn)
    if found is not None:
        return found
    new_id = uuid.uuid4().hex
    conn.execute(sa.insert(data_migration_ledger).values(id=new_id, created_at=utcnow()))
    return new_id


def ledger_id(conn: Connection) -> str | None:
    """The ledger's identity (a uuid4 hex), or None before it was created."""
    return conn.execute(sa.select(data_migration_ledger.c.id).limit(1)).scalar()


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


@dataclass(frozen=True)
class Checkpoint:
    """A ``data_migration_checkpoints`` row: how far one ``ctx.batches`` walk got."""

    version: str
    walk: int
    name: str
    last_key: str
    rows_done: int
    rows_total: int | None
    eta_s: float | None
    updated_at: datetime
    release: str | None


@dataclass
class LedgerState:
    """The ledger as read at one moment: applied rows, latest attempts and checkpoints by
    padded version, and the identity (None while the ledger does not exist)."""

    applied: dict[str, AppliedRow] = field(default_factory=dict)
    attempts: dict[str, Attempt] = field(default_factory=dict)
    checkpoints: dict[str, list[Checkpoint]] = field(default_factory=dict)
    ledger_id: str | None = None


def read_state(conn: Connection) -> LedgerState:
    """Everything ``status``, ``check`` and ``apply`` need, in a few queries; an empty state
    when the ledger does not exist (tables of an older runner may be missing: read what is
    there)."""
    present = existing_tables(conn)
    if not {t.name for t in CORE_TABLES} <= present:
        return LedgerState()
    state = LedgerState(applied=applied_rows(conn), attempts=last_attempts(conn))
    if data_migration_checkpoints.name in present:
        state.checkpoints = checkpoints(conn)
    if data_migration_ledger.name in present:
        state.ledger_id = ledger_id(conn)
    return state


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


def checkpoints(conn: Connection, version: str | None = None) -> dict[str, list[Checkpoint]]:
    """Checkpoints by padded version, each list in walk order."""
    t = data_migration_checkpoints
    query = sa.select(t).order_by(t.c.version, t.c.walk)
    if version is not None:
        query = query.where(t.c.version == version)
    found: dict[str, list[Checkpoint]] = {}
    for row in conn.execute(query).mappings():
        found.setdefault(pad_version(row["version"]), []).append(Checkpoint(**row))
    return found


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


def insert_attempt(conn: Connection, attempt: Attempt) -> int:
    """Insert an attempt row; returns its id (to settle a ``running`` row later)."""
    result = conn.execute(
        sa.insert(data_migration_attempts).values(**attempt.__dict__),
        execution_options=_WRITE_OPTIONS,
    )
    return int(result.inserted_primary_key[0])


def settle_attempt(conn: Connection, attempt_id: int, status: str, error: str | None) -> None:
    """Give the ``running`` attempt ``attempt_id`` its outcome."""
    t = data_migration_attempts
    conn.execute(
        sa.update(t)
        .where(t.c.id == attempt_id)
        .values(status=status, finished_at=utcnow(), error=error),
        execution_options=_WRITE_OPTIONS,
    )


def settle_interrupted(conn: Connection) -> list[str]:
    """Mark every ``running`` attempt as ``interrupted``; call it holding the runner lock (then
    no runner can still be running them: they were killed). Returns their versions."""
    t = data_migration_attempts
    versions = list(conn.execute(sa.select(t.c.version).where(t.c.status == RUNNING)).scalars())
    if versions:
        conn.execute(
            sa.update(t)
            .where(t.c.status == RUNNING)
            .values(
                status=INTERRUPTED,
                finished_at=utcnow(),
                error="interrupted: the runner ended without recording a result (killed, or "
                "its machine stopped); the migration's last transaction was rolled back",
            )
        )
    return versions


# Built once: a checkpoint is written after every batch, and building a statement costs more
# than sending it.
_INSERT_CHECKPOINT = sa.insert(data_migration_checkpoints)
_UPDATE_CHECKPOINT = sa.update(data_migration_checkpoints).where(
    (data_migration_checkpoints.c.version == sa.bindparam("key_version"))
    & (data_migration_checkpoints.c.walk == sa.bindparam("key_walk"))
)


def save_checkpoint(conn: Connection, checkpoint: Checkpoint, *, exists: bool) -> None:
    """Write a walk's checkpoint in the caller's transaction: an UPDATE when its row
    ``exists``, else an INSERT."""
    values = dict(checkpoint.__dict__)
    if exists:
        values["key_version"], values["key_walk"] = values.pop("version"), values.pop("walk")
        conn.execute(_UPDATE_CHECKPOINT, values, execution_options=_WRITE_OPTIONS)
    else:
        conn.execute(_INSERT_CHECKPOINT, values, execution_options=_WRITE_OPTIONS)


def delete_checkpoints(conn: Connection, version: str) -> None:
    """Forget a migration's checkpoints: it is applied (or reverted, to start afresh)."""
    t = data_migration_checkpoints
    conn.execute(sa.delete(t).where(t.c.version == version), execution_options=_WRITE_OPTIONS)
