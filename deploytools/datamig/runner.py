"""``status``, ``apply`` and ``revert``: one plain function per command, settings first.

The order of work is what makes the runner safe to run from several places at once:

1. read and validate the migration files (malformed names, duplicates: exit 2, nothing touched);
2. take the runner lock (waiting up to ``lock_timeout``), create the ledger tables if missing;
3. read the ledger *under the lock*, so two runners never both see a migration as pending;
4. import every pending module before running any (a broken module: exit 2, nothing ran);
5. run each migration in its own transaction together with its ledger row; on the first error
   roll it back, record the failed attempt in a separate transaction and stop.

``status`` and ``--dry-run`` take no lock, import no migration and write nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from deploytools.datamig import ledger
from deploytools.datamig.context import MigrationContext, RedisConnector, migration_logger
from deploytools.datamig.discovery import (
    MigrationFile,
    defines_revert,
    discover,
    load_module,
    pad_version,
)
from deploytools.datamig.ledger import AppliedRow, Attempt, LedgerDatabase
from deploytools.datamig.lock import runner_lock
from deploytools.exceptions import MigrationFailed, UsageError
from deploytools.redact import redact, url_passwords

log = logging.getLogger("deploytools.datamig")

APPLIED, PENDING, FAILED, CHANGED, MISSING = "applied", "pending", "failed", "changed", "missing"
#: How much of a failure's traceback the ledger keeps (the end is where the error is).
TRACEBACK_TAIL_CHARS = 4000
ERROR_SUMMARY_CHARS = 1000
_TRACE_MARK = "\n\n--- Traceback (tail) ---\n"


@dataclass
class Settings:
    """What every command needs; the command line builds it from flags and the environment."""

    path: Path = Path("migrations")  # the migrations folder (relative to the release)
    root: Path | None = None  # the deploy root: the SQLite ledger is <root>/shared/
    database_url: str | None = None  # the ledger (and ctx.db) database; else SQLite under root
    redis_url: str | None = None  # ctx.redis; only needed by migrations that use it
    release: str | None = None  # recorded in the ledger by apply
    lock_timeout: float = 60.0  # seconds to wait for another runner to finish
    dry_run: bool = False  # list what would run; import, call and write nothing

    @classmethod
    def from_environ(cls, environ: Any = None, **values: Any) -> Settings:
        """Settings with ``database_url`` / ``redis_url`` from DATABASE_URL / REDIS_URL unless
        given (a ``None`` value means "not given")."""
        environ = os.environ if environ is None else environ
        values = {key: value for key, value in values.items() if value is not None}
        values.setdefault("database_url", environ.get("DATABASE_URL") or None)
        values.setdefault("redis_url", environ.get("REDIS_URL") or None)
        return cls(**values)

    def secrets(self) -> list[str]:
        """The passwords to keep out of every message (see :func:`deploytools.redact.redact`)."""
        return url_passwords(self.database_url, self.redis_url)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets())


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- results


@dataclass
class MigrationStatus:
    """One line of ``status``."""

    version: str
    name: str
    state: str
    out_of_order: bool = False
    applied_at: datetime | None = None
    duration_ms: int | None = None
    release: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "state": self.state,
            "out_of_order": self.out_of_order,
            "applied_at": _iso(self.applied_at),
            "duration_ms": self.duration_ms,
            "release": self.release,
            "error": self.error,
        }


@dataclass
class StatusReport:
    """Every migration known to the files or the ledger, in version order."""

    migrations: list[MigrationStatus]
    ledger: str = ""  # where the ledger is, password-free, for people

    @property
    def pending(self) -> int:
        """Migrations that ``apply`` would run (``failed`` ones are pending too)."""
        return sum(m.state in (PENDING, FAILED) for m in self.migrations)

    def to_json(self) -> dict[str, Any]:
        return {"migrations": [m.to_json() for m in self.migrations], "pending": self.pending}

    @classmethod
    def from_json(cls, data: dict[str, Any], ledger: str = "") -> StatusReport:
        """A report read back from ``status --json`` (e.g. a remote host's answer)."""
        lines = []
        for entry in data.get("migrations", []):
            applied_at = entry.get("applied_at")
            lines.append(
                MigrationStatus(
                    version=entry["version"],
                    name=entry["name"],
                    state=entry["state"],
                    out_of_order=bool(entry.get("out_of_order")),
                    applied_at=datetime.fromisoformat(applied_at) if applied_at else None,
                    duration_ms=entry.get("duration_ms"),
                    release=entry.get("release"),
                    error=entry.get("error"),
                )
            )
        return cls(lines, ledger=ledger)


@dataclass
class Done:
    """A migration applied or reverted in this run."""

    version: str
    name: str
    duration_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "duration_ms": self.duration_ms}


@dataclass
class Failure:
    """The migration that raised: ``error`` is ``Type: message``; ``detail`` adds the traceback
    tail (as recorded in the ledger)."""

    version: str
    name: str
    error: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "error": self.error}


def _ref(migration: MigrationFile | AppliedRow) -> dict[str, str]:
    return {"version": migration.version, "name": migration.name}


@dataclass
class ApplyResult:
    """What ``apply`` did; with ``dry_run``, ``would_apply`` lists what it would have run."""

    applied: list[Done] = field(default_factory=list)
    failed: Failure | None = None
    pending_before: int = 0
    dry_run: bool = False
    would_apply: list[MigrationFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed is None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "applied": [done.to_json() for done in self.applied],
            "failed": self.failed.to_json() if self.failed else None,
            "pending_before": self.pending_before,
        }
        if self.dry_run:
            data["dry_run"] = True
            data["would_apply"] = [_ref(m) for m in self.would_apply]
        return data


@dataclass
class RevertResult:
    """What ``revert`` did; ``not_revertible`` are targets without ``revert`` or without a file."""

    reverted: list[Done] = field(default_factory=list)
    failed: Failure | None = None
    not_revertible: list[AppliedRow] = field(default_factory=list)
    dry_run: bool = False
    would_revert: list[AppliedRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed is None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "reverted": [done.to_json() for done in self.reverted],
            "failed": self.failed.to_json() if self.failed else None,
            "not_revertible": [_ref(row) for row in self.not_revertible],
        }
        if self.dry_run:
            data["dry_run"] = True
            data["would_revert"] = [_ref(row) for row in self.would_revert]
        return data


# --------------------------------------------------------------------------- plumbing


@contextlib.contextmanager
def _ledger_errors(settings: Settings, database: LedgerDatabase) -> Iterator[None]:
    """Database errors outside a migration (connect, lock, ledger reads) become MigrationFailed
    with the password-free URL, translated once here."""
    try:
        yield
    except sa.exc.SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()
        raise MigrationFailed(
            settings.redact(
                f"the ledger database {database.display} failed: "
                f"{type(error).__name__}: {reason[0] if reason else ''}. "
                "Check DATABASE_URL (or --database-url) and that the database is up"
            )
        ) from None


@contextlib.contextmanager
def _engine(database: LedgerDatabase) -> Iterator[Engine]:
    engine = ledger.create_engine(database)
    try:
        yield engine
    finally:
        engine.dispose()


def _ms(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)


def _describe(settings: Settings, error: BaseException) -> tuple[str, str]:
    """(``Type: message``, the same plus the traceback tail), passwords masked."""
    summary = settings.redact(f"{type(error).__name__}: {error}".strip())
    if len(summary) > ERROR_SUMMARY_CHARS:
        summary = summary[: ERROR_SUMMARY_CHARS - 3] + "..."
    trace = "".join(traceback.format_exception(error))[-TRACEBACK_TAIL_CHARS:]
    return summary, settings.redact(f"{summary}{_TRACE_MARK}{trace}")


def _summary(error_text: str | None) -> str | None:
    """The ``Type: message`` part of a recorded error."""
    if error_text is None:
        return None
    return error_text.split(_TRACE_MARK, 1)[0]


@dataclass
class _Ledger:
    """The ledger as read at one moment."""

    applied: dict[str, AppliedRow]
    attempts: dict[str, Attempt]


def _read_ledger(engine: Engine) -> _Ledger:
    with engine.connect() as conn:
        if not ledger.tables_exist(conn):
            return _Ledger({}, {})
        return _Ledger(ledger.applied_rows(conn), ledger.last_attempts(conn))


def _read_ledger_if_present(database: LedgerDatabase) -> _Ledger:
    """The ledger, or an empty one if it does not exist yet; never creates anything."""
    if database.is_sqlite:
        assert database.sqlite_path is not None
        if not database.sqlite_path.exists():
            return _Ledger({}, {})
    with _engine(database) as engine:
        return _read_ledger(engine)


def _states(files: list[MigrationFile], book: _Ledger) -> list[MigrationStatus]:
    by_key = {m.sort_key: m for m in files}
    lines = []
    for key in sorted(by_key.keys() | book.applied.keys()):
        migration, row = by_key.get(key), book.applied.get(key)
        if row is not None:
            if migration is None:
                state = MISSING
            elif migration.checksum is not None and migration.checksum != row.checksum:
                state = CHANGED
            else:
                state = APPLIED
            lines.append(
                MigrationStatus(
                    version=row.version,
                    name=row.name,
                    state=state,
                    out_of_order=row.out_of_order,
                    applied_at=row.applied_at,
                    duration_ms=row.duration_ms,
                    release=row.release,
                )
            )
            continue
        assert migration is not None
        attempt = book.attempts.get(key)
        failed = attempt is not None and attempt.status == ledger.FAILED
        lines.append(
            MigrationStatus(
                version=migration.version,
                name=migration.name,
                state=FAILED if failed else PENDING,
                release=attempt.release if failed and attempt else None,
                error=_summary(attempt.error) if failed and attempt else None,
            )
        )
    return lines


def _warnings(lines: list[MigrationStatus]) -> list[str]:
    messages = []
    for line in lines:
        if line.state == CHANGED:
            messages.append(
                f"migration {line.version}_{line.name}.py changed after it was applied "
                "(checksum differs); it will not run again: write a new migration instead"
            )
        elif line.state == MISSING:
            messages.append(
                f"migration {line.version} ({line.name}) is in the ledger but its file is gone"
            )
    for message in messages:
        log.warning(message)
    return messages


def _pending(files: list[MigrationFile], book: _Ledger) -> list[MigrationFile]:
    return [m for m in files if m.sort_key not in book.applied]


# --------------------------------------------------------------------------- status


def status(settings: Settings) -> StatusReport:
    """Every migration's state: applied, pending, failed, changed or missing.

    Read-only: no lock, no import of migration modules, no ledger tables or SQLite file created.
    """
    files = discover(settings.path)
    database = ledger.ledger_database(settings.database_url, settings.root)
    with _ledger_errors(settings, database):
        book = _read_ledger_if_present(database)
    return StatusReport(_states(files, book), ledger=database.display)


# --------------------------------------------------------------------------- apply


def apply(settings: Settings) -> ApplyResult:
    """Apply the pending migrations in version order, each in its own transaction.

    Stops at the first failure (``result.failed``); the migrations before it stay applied.
    Raises MigrationFileError for bad files or a pending module that does not import or lacks
    ``run`` (before anything runs), LockHeld when another runner keeps the lock past
    ``lock_timeout``, and MigrationFailed when the ledger database cannot be used.
    """
    files = discover(settings.path)
    database = ledger.ledger_database(settings.database_url, settings.root)
    if settings.dry_run:
        with _ledger_errors(settings, database):
            book = _read_ledger_if_present(database)
        lines = _states(files, book)
        pending = _pending(files, book)
        return ApplyResult(
            pending_before=len(pending),
            dry_run=True,
            would_apply=pending,
            warnings=_warnings(lines),
        )
    if database.sqlite_path is not None:
        database.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        _ledger_errors(settings, database),
        _engine(database) as engine,
        runner_lock(database, engine, settings.lock_timeout),
    ):
        with engine.begin() as conn:
            ledger.create_tables(conn)
        book = _read_ledger(engine)
        result = ApplyResult(warnings=_warnings(_states(files, book)))
        pending = _pending(files, book)
        result.pending_before = len(pending)
        # Import everything first: a broken module must stop the run before anything runs.
        modules = [(migration, load_module(migration)) for migration in pending]
        newest = max(book.applied, default="")
        redis = RedisConnector(settings.redis_url)
        try:
            for migration, module in modules:
                out_of_order = migration.sort_key < newest
                outcome = _apply_one(settings, engine, redis, migration, module, out_of_order)
                if isinstance(outcome, Failure):
                    result.failed = outcome
                    break
                result.applied.append(outcome)
                newest = max(newest, migration.sort_key)
        finally:
            redis.close()
    return result


def _run_step(
    settings: Settings,
    engine: Engine,
    redis: RedisConnector,
    *,
    version: str,
    name: str,
    release: str | None,
    verb: str,
    step: Callable[[MigrationContext], object],
    record: Callable[[Connection, Attempt, int], None],
    failure_prefix: str = "",
) -> Done | Failure:
    """Run ``step(ctx)`` (a migration's ``run`` or ``revert``) in its own transaction, with
    ``record`` writing its ledger change in that same transaction: both commit or neither.
    On an exception the transaction is rolled back and the failed attempt recorded apart."""
    label = f"{version} {name}"
    log.info("%s %s", verb, label)
    started_at, start = ledger.utcnow(), time.perf_counter()
    try:
        with engine.connect() as conn, conn.begin():
            ctx = MigrationContext(
                db=conn,
                redis_connector=redis,
                log=migration_logger(version, name),
                release=release,
                version=version,
                name=name,
            )
            step(ctx)
            duration_ms = _ms(start)
            attempt = Attempt(
                version=version,
                name=name,
                status="",  # set by ``record``
                started_at=started_at,
                finished_at=ledger.utcnow(),
                error=None,
                release=release,
                host=ledger.this_host(),
            )
            record(conn, attempt, duration_ms)
    except Exception as error:
        summary, detail = _describe(settings, error)
        log.error("%s %s failed after %d ms: %s", verb, label, _ms(start), summary)
        _record_failure(
            settings, engine, version, name, started_at, failure_prefix + detail, release=release
        )
        return Failure(version, name, summary, detail)
    log.info("%s: done in %d ms", label, duration_ms)
    return Done(version, name, duration_ms)


def _apply_one(
    settings: Settings,
    engine: Engine,
    redis: RedisConnector,
    migration: MigrationFile,
    module: ModuleType,
    out_of_order: bool,
) -> Done | Failure:
    """``run(ctx)`` and, in the same transaction, its ledger row and an applied attempt."""
    assert migration.checksum is not None

    def record(conn: Connection, attempt: Attempt, duration_ms: int) -> None:
        ledger.insert_applied(
            conn,
            AppliedRow(
                version=migration.version,
                name=migration.name,
                checksum=migration.checksum,
                applied_at=attempt.finished_at,
                duration_ms=duration_ms,
                release=settings.release,
                host=attempt.host,
                applied_by=ledger.this_user(),
                out_of_order=out_of_order,
            ),
        )
        ledger.insert_attempt(conn, replace(attempt, status=ledger.APPLIED))

    return _run_step(
        settings,
        engine,
        redis,
        version=migration.version,
        name=migration.name,
        release=settings.release,
        verb="applying out of order" if out_of_order else "applying",
        step=module.run,
        record=record,
    )


def _record_failure(
    settings: Settings,
    engine: Engine,
    version: str,
    name: str,
    started_at: datetime,
    detail: str,
    *,
    release: str | None,
) -> None:
    """Record a failed attempt in its own transaction (the migration's was rolled back)."""
    try:
        with engine.begin() as conn:
            ledger.insert_attempt(
                conn,
                Attempt(
                    version=version,
                    name=name,
                    status=ledger.FAILED,
                    started_at=started_at,
                    finished_at=ledger.utcnow(),
                    error=detail,
                    release=release,
                    host=ledger.this_host(),
                ),
            )
    except sa.exc.SQLAlchemyError as error:
        log.error(
            "could not record the failed attempt of %s: %s",
            version,
            settings.redact(str(error).splitlines()[0]),
        )


# --------------------------------------------------------------------------- revert


def _revert_targets(book: _Ledger, version: str | None, release: str | None) -> list[AppliedRow]:
    if version is not None:
        row = book.applied.get(pad_version(version))
        if row is None:
            raise UsageError(
                f"migration {version} is not applied, so there is nothing to revert "
                "(see `python -m deploytools.datamig status`)"
            )
        return [row]
    rows = [row for row in book.applied.values() if row.release == release]
    return sorted(rows, key=lambda row: row.sort_key, reverse=True)


def _check_revert_args(version: str | None, release: str | None) -> None:
    if (version is None) == (release is None):
        raise UsageError("revert needs exactly one of VERSION or --release ID")
    if version is not None and not (version.isdigit() and len(version) in (12, 14)):
        raise UsageError(f"{version!r} is not a migration version (12 or 14 digits)")


def _not_revertible_error(rows: list[AppliedRow], reasons: dict[str, str]) -> UsageError:
    listed = "; ".join(f"{row.version} {row.name}: {reasons[row.sort_key]}" for row in rows)
    return UsageError(
        f"cannot revert {listed}. Nothing was reverted. Add a revert(ctx) function, or pass "
        "--skip-irreversible to revert the others and leave these applied"
    )


def revert(
    settings: Settings,
    version: str | None = None,
    *,
    release: str | None = None,
    skip_irreversible: bool = False,
) -> RevertResult:
    """Revert one applied migration (``version``) or all those ``release`` applied, newest first.

    Each ``revert(ctx)`` runs in its own transaction with the deletion of its ledger row. If a
    target has no ``revert`` or no file, nothing is reverted (UsageError) unless
    ``skip_irreversible``, which reverts the others and lists these in ``not_revertible``.
    Stops at the first revert that raises (``result.failed``).
    """
    _check_revert_args(version, release)
    files = {m.sort_key: m for m in discover(settings.path)}
    database = ledger.ledger_database(settings.database_url, settings.root)
    if settings.dry_run:
        with _ledger_errors(settings, database):
            book = _read_ledger_if_present(database)
        targets = _revert_targets(book, version, release)
        result = RevertResult(dry_run=True)
        for row in targets:
            migration = files.get(row.sort_key)
            revertible = migration is not None and defines_revert(migration)
            (result.would_revert if revertible else result.not_revertible).append(row)
        return result
    if database.sqlite_path is not None and not database.sqlite_path.exists():
        _revert_targets(_Ledger({}, {}), version, release)  # a VERSION is not applied: raises
        return RevertResult()
    with (
        _ledger_errors(settings, database),
        _engine(database) as engine,
        runner_lock(database, engine, settings.lock_timeout),
    ):
        book = _read_ledger(engine)
        targets = _revert_targets(book, version, release)
        result = RevertResult(warnings=_warnings(_states(list(files.values()), book)))
        plan: list[tuple[AppliedRow, ModuleType]] = []
        reasons: dict[str, str] = {}
        for row in targets:
            migration = files.get(row.sort_key)
            if migration is None:
                reasons[row.sort_key] = "its file is missing"
                continue
            module = load_module(migration)
            if not callable(getattr(module, "revert", None)):
                reasons[row.sort_key] = "it has no revert(ctx) function"
                continue
            plan.append((row, module))
        result.not_revertible = [row for row in targets if row.sort_key in reasons]
        if result.not_revertible and not skip_irreversible:
            raise _not_revertible_error(result.not_revertible, reasons)
        for row in result.not_revertible:
            log.warning("not reverting %s %s: %s", row.version, row.name, reasons[row.sort_key])
        redis = RedisConnector(settings.redis_url)
        try:
            for row, module in plan:
                outcome = _revert_one(settings, engine, redis, row, module)
                if isinstance(outcome, Failure):
                    result.failed = outcome
                    break
                result.reverted.append(outcome)
        finally:
            redis.close()
    return result


def _revert_one(
    settings: Settings,
    engine: Engine,
    redis: RedisConnector,
    row: AppliedRow,
    module: ModuleType,
) -> Done | Failure:
    """``revert(ctx)`` and, in the same transaction, the removal of its ledger row."""

    def record(conn: Connection, attempt: Attempt, _duration_ms: int) -> None:
        ledger.delete_applied(conn, row.version)
        ledger.insert_attempt(conn, replace(attempt, status=ledger.REVERTED))

    return _run_step(
        settings,
        engine,
        redis,
        version=row.version,
        name=row.name,
        release=row.release,
        verb="reverting",
        step=module.revert,
        record=record,
        failure_prefix="revert failed: ",
    )
