"""``status``, ``check``, ``apply`` and ``revert``: one plain function per command, settings first.

The order of work is what makes the runner safe to run from several places at once:

1. read and validate the migration files (malformed names, duplicates: exit 2, nothing touched);
2. take the runner lock (waiting up to ``lock_timeout``), create the ledger tables if missing,
   and mark attempts left ``running`` by a killed runner as ``interrupted``;
3. read the ledger *under the lock*, so two runners never both see a migration as pending;
4. import every pending module before running any (a broken module: exit 2, nothing ran);
5. for each migration: commit a ``running`` attempt, run it in its own transaction, and write
   its ledger row and settle the attempt in that same transaction; on the first failure (an
   exception, ``sys.exit``/``os._exit``, SIGTERM/SIGINT) roll it back, record the failed
   attempt apart and stop.

``status``, ``check`` and ``--dry-run`` take no lock, run nothing and write nothing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from deploytools.datamig import ledger
from deploytools.datamig.batches import Walker
from deploytools.datamig.context import (
    MigrationConnection,
    MigrationContext,
    RedisConnector,
    migration_logger,
)
from deploytools.datamig.discovery import (
    PHASES,
    MigrationFile,
    check_phase,
    defines_revert,
    discover,
    load_module,
    pad_version,
)
from deploytools.datamig.interrupts import MigrationExited, RunnerInterrupted, interrupts
from deploytools.datamig.ledger import AppliedRow, Attempt, LedgerDatabase, LedgerState
from deploytools.datamig.lock import runner_active, runner_lock
from deploytools.datamig.results import (
    APPLIED,
    CHANGED,
    FAILED,
    INTERRUPTED,
    MISSING,
    PENDING,
    RUNNING,
    ApplyResult,
    CheckReport,
    Done,
    Failure,
    MigrationStatus,
    Progress,
    RevertResult,
    StatusReport,
    parse_last_key,
)
from deploytools.exceptions import (
    DeployToolsError,
    MigrationFailed,
    MigrationFileError,
    UsageError,
)
from deploytools.redact import redact, url_passwords

__all__ = [
    "ApplyResult",
    "CheckReport",
    "MigrationStatus",
    "RevertResult",
    "Settings",
    "StatusReport",
    "apply",
    "check",
    "revert",
    "status",
]

log = logging.getLogger("deploytools.datamig")

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
    lock_timeout: float = 60.0  # seconds to wait for another runner to finish (0: do not wait)
    dry_run: bool = False  # list what would run; import, call and write nothing
    phase: str | None = None  # apply only pending migrations of this phase (None: all)
    statement_timeout: float | None = None  # PostgreSQL statement_timeout of ctx.db, seconds
    pg_lock_timeout: float | None = None  # PostgreSQL lock_timeout of ctx.db, seconds
    extra_secrets: list[str] = field(default_factory=list)  # literal values to mask (env file)

    def __post_init__(self) -> None:
        if self.phase is not None and self.phase not in PHASES:
            raise UsageError(f"--phase must be one of {', '.join(PHASES)}, not {self.phase!r}")

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
        """The values to keep out of every message (see :func:`deploytools.redact.redact`)."""
        return [*url_passwords(self.database_url, self.redis_url), *self.extra_secrets]

    def redact(self, text: str) -> str:
        return redact(text, self.secrets())


# --------------------------------------------------------------------------- plumbing


def _first_line(error: BaseException) -> str:
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()
    return reason[0] if reason else type(error).__name__


@contextlib.contextmanager
def _ledger_errors(
    settings: Settings, database: LedgerDatabase, error_class: type[DeployToolsError]
) -> Iterator[None]:
    """Database errors outside a migration (connect, lock, ledger reads) become
    ``error_class`` naming the password-free URL, translated once here."""
    try:
        yield
    except sa.exc.SQLAlchemyError as error:
        raise error_class(
            settings.redact(
                f"the ledger database {database.display} failed: "
                f"{type(error).__name__}: {_first_line(error)}. "
                "Check DATABASE_URL (or --database-url) and that the database is up"
            )
        ) from None


@contextlib.contextmanager
def _answer_fields(**fields: Any) -> Iterator[None]:
    """Attach ``fields`` (e.g. the ledger's name) to a DeployToolsError leaving the block, for
    the JSON error answer."""
    try:
        yield
    except DeployToolsError as error:
        known = getattr(error, "fields", {})
        error.fields = {**fields, **known}  # type: ignore[attr-defined]
        raise


@contextlib.contextmanager
def _engine(database: LedgerDatabase) -> Iterator[Engine]:
    engine = ledger.create_engine(database)
    try:
        yield engine
    finally:
        engine.dispose()


def _ms(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)


def _read_ledger(engine: Engine) -> LedgerState:
    with engine.connect() as conn:
        return ledger.read_state(conn)


def _read_ledger_if_present(database: LedgerDatabase, engine: Engine) -> LedgerState:
    """The ledger, or an empty one if it does not exist yet; never creates anything (not even
    the SQLite file)."""
    if database.sqlite_path is not None and not database.sqlite_path.exists():
        return LedgerState()
    return _read_ledger(engine)


# --------------------------------------------------------------------------- states


def _progress(book: LedgerState, key: str, running: bool) -> Progress | None:
    """The latest walk's checkpoint as progress; a running migration's ETA counts down."""
    walks = book.checkpoints.get(key)
    if not walks:
        return None
    latest = max(walks, key=lambda checkpoint: checkpoint.updated_at)
    eta = latest.eta_s
    if eta is not None and running:
        eta = max(eta - (ledger.utcnow() - latest.updated_at).total_seconds(), 0.0)
    return Progress(latest.rows_done, parse_last_key(latest.last_key), eta)


def _unapplied_state(attempt: Attempt | None, lock_held: Callable[[], bool]) -> str:
    if attempt is None:
        return PENDING
    if attempt.status == ledger.FAILED:
        return FAILED
    if attempt.status == ledger.RUNNING:
        return RUNNING if lock_held() else INTERRUPTED
    if attempt.status == ledger.INTERRUPTED:
        return INTERRUPTED
    return PENDING


def _states(
    files: list[MigrationFile], book: LedgerState, lock_held: Callable[[], bool]
) -> list[MigrationStatus]:
    """Every migration's state, from the files of this release and the ledger. A migration
    whose latest attempt failed or was interrupted is listed even when its file is not in this
    release (``in_release`` false): after a rollback, the old release shows what failed."""
    by_key = {m.sort_key: m for m in files}
    unsettled = {
        key
        for key, attempt in book.attempts.items()
        if attempt.status in (ledger.FAILED, ledger.RUNNING, ledger.INTERRUPTED)
    }
    lines = []
    for key in sorted(by_key.keys() | book.applied.keys() | unsettled):
        migration, row = by_key.get(key), book.applied.get(key)
        if row is not None:
            if migration is None:
                state = MISSING
            elif migration.name != row.name or (
                migration.checksum is not None and migration.checksum != row.checksum
            ):
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
                    phase=migration.phase if migration else None,
                    in_release=migration is not None,
                )
            )
            continue
        attempt = book.attempts.get(key)
        state = _unapplied_state(attempt, lock_held)
        if migration is None and state == PENDING:
            continue  # reverted, and its file gone: nothing to show
        unsettled_state = state != PENDING and attempt is not None
        lines.append(
            MigrationStatus(
                version=migration.version if migration else attempt.version,  # type: ignore[union-attr]
                name=migration.name if migration else attempt.name,  # type: ignore[union-attr]
                state=state,
                release=attempt.release if unsettled_state else None,  # type: ignore[union-attr]
                error=_summary(attempt.error) if unsettled_state else None,  # type: ignore[union-attr]
                progress=_progress(book, key, state == RUNNING),
                phase=migration.phase if migration else None,
                in_release=migration is not None,
            )
        )
    return lines


def _summary(error_text: str | None) -> str | None:
    """The ``Type: message`` part of a recorded error."""
    if error_text is None:
        return None
    return error_text.split(_TRACE_MARK, 1)[0]


def _warnings(
    lines: list[MigrationStatus], files: list[MigrationFile], book: LedgerState
) -> list[str]:
    """Findings that do not stop a run; each is also logged."""
    by_key = {m.sort_key: m for m in files}
    messages = []
    for line in lines:
        key = pad_version(line.version)
        if line.state == CHANGED:
            migration = by_key[key]
            if migration.name != line.name:
                messages.append(
                    f"version {line.version} is in the ledger as {line.version}_{line.name} "
                    f"but this release has {migration.filename}"
                )
            else:
                messages.append(
                    f"migration {migration.filename} changed after it was applied (checksum "
                    "differs); it will not run again: write a new migration instead"
                )
        elif line.state == MISSING:
            messages.append(
                f"migration {line.version} ({line.name}) is in the ledger but its file is gone"
            )
        elif not line.in_release:
            messages.append(
                f"migration {line.version}_{line.name} is {line.state} (release "
                f"{line.release or '?'}) and is not in this release"
            )
    newest = max(book.applied, default="")
    for line in lines:
        to_apply = line.in_release and line.state in (PENDING, FAILED, INTERRUPTED)
        if to_apply and pad_version(line.version) < newest:
            messages.append(
                f"migration {line.version}_{line.name} sorts before the newest applied "
                f"migration ({book.applied[newest].version}): it will run out of order"
            )
    for message in messages:
        log.warning(message)
    return messages


def _settings_warnings(settings: Settings, database: LedgerDatabase) -> list[str]:
    if database.is_sqlite and (settings.statement_timeout or settings.pg_lock_timeout):
        message = "--statement-timeout and --pg-lock-timeout apply to PostgreSQL only: ignored"
        log.warning(message)
        return [message]
    return []


def _refuse_renamed(files: list[MigrationFile], book: LedgerState) -> None:
    """A version is one migration: applied under one name, it cannot come back under another."""
    for migration in files:
        row = book.applied.get(migration.sort_key)
        if row is not None and row.name != migration.name:
            raise MigrationFileError(
                f"version {migration.version} is in the ledger as {row.version}_{row.name} "
                f"(applied {row.applied_at:%Y-%m-%d %H:%M} UTC by release {row.release}) but "
                f"this release has {migration.filename}: a version names one migration. Give "
                f"{migration.filename} a new version (`invoke datamig.new`), or restore its name"
            )


def _pending(
    files: list[MigrationFile], book: LedgerState, phase: str | None
) -> list[MigrationFile]:
    """Files not in the ledger, in version order; only those of ``phase`` when given. The phase
    of each is validated (from its source) first."""
    pending = [m for m in files if m.sort_key not in book.applied]
    for migration in pending:
        check_phase(migration)
    return [m for m in pending if phase is None or m.phase == phase]


def _import(migration: MigrationFile) -> ModuleType:
    """Import a pending migration; its module body is migration code (signals, exits)."""
    try:
        with interrupts.migration_code():
            return load_module(migration)
    except MigrationExited as exited:
        raise MigrationFileError(
            f"migration {migration.filename} exits the process while it is imported "
            f"(os._exit({exited.code})); fix the file before running migrations"
        ) from None


# --------------------------------------------------------------------------- status


def status(settings: Settings) -> StatusReport:
    """Every migration's state: applied, pending, failed, changed, missing, running or
    interrupted, with progress for batched ones.

    Read-only: no lock taken, no migration imported, no ledger table or SQLite file created.
    """
    files = discover(settings.path)
    database = ledger.ledger_database(settings.database_url, settings.root)
    with (
        _answer_fields(ledger=database.display),
        _ledger_errors(settings, database, MigrationFailed),
        _engine(database) as engine,
    ):
        book = _read_ledger_if_present(database, engine)
        lines = _states(files, book, functools.cache(lambda: runner_active(database, engine)))
    return StatusReport(
        lines,
        ledger=database.display,
        ledger_id=book.ledger_id,
        warnings=_warnings(lines, files, book),
    )


# --------------------------------------------------------------------------- check


def _unusable(conn: Connection, book: LedgerState) -> str | None:
    """Why the runner could not write the ledger (PostgreSQL privileges), or None."""
    if conn.dialect.name != "postgresql":
        return None
    if book.ledger_id is None and not book.applied:
        can_create = conn.execute(
            sa.text("SELECT has_schema_privilege(current_schema(), 'CREATE')")
        ).scalar()
        if not can_create:
            return "this user cannot create the ledger tables in the current schema"
        return None
    can_write = conn.execute(
        sa.text("SELECT has_table_privilege('data_migrations', 'INSERT')")
    ).scalar()
    return None if can_write else "this user cannot write the data_migrations table"


def warm_up(database_url: str | None, root: Path | None) -> None:
    """Import what the steps will need (this module brought SQLAlchemy; an engine brings the
    ledger's dialect and driver) without connecting: an early session does it while its
    release is still being uploaded. A bad URL is left for the check to report."""
    with contextlib.suppress(Exception):
        ledger.create_engine(ledger.ledger_database(database_url, root)).dispose()


def check(settings: Settings) -> CheckReport:
    """Validate everything a deploy needs before it changes anything: the files, every pending
    module (imported, no bytecode written), their phases, the ledger (connected read-only) and
    Redis (pinged when REDIS_URL is set). Applies nothing, takes no lock, creates nothing.

    Any finding is a UsageError (exit 2): unreachable or unusable database or Redis, a broken
    module, a version in the ledger under another name.
    """
    files = discover(settings.path)
    database = ledger.ledger_database(settings.database_url, settings.root)
    with _answer_fields(ledger=database.display):
        if database.sqlite_path is not None and not database.sqlite_path.exists():
            folder = database.sqlite_path.parent
            if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
                raise UsageError(
                    f"the SQLite ledger {database.sqlite_path} cannot be created: {folder} is "
                    "missing or not writable (run `invoke setup`, or fix its permissions)"
                )
            book = LedgerState()
        else:
            with (
                _ledger_errors(settings, database, UsageError),
                _engine(database) as engine,
                engine.connect() as conn,
            ):
                book = ledger.read_state(conn)
                reason = _unusable(conn, book)
            if reason:
                raise UsageError(f"the ledger database {database.display} is not usable: {reason}")
        with _answer_fields(ledger_id=book.ledger_id):
            _refuse_renamed(files, book)
            pending = _pending(files, book, None)
            for migration in pending:
                _import(migration)
            if settings.redis_url:
                RedisConnector(settings.redis_url).ping()
    lines = _states(files, book, lambda: False)
    return CheckReport(
        pending=pending,
        applied=len(book.applied),
        ledger=database.display,
        ledger_id=book.ledger_id,
        warnings=_settings_warnings(settings, database) + _warnings(lines, files, book),
    )


# --------------------------------------------------------------------------- apply


def apply(settings: Settings) -> ApplyResult:
    """Apply the pending migrations (of ``settings.phase``, or all) in version order, each in
    its own transaction.

    Stops at the first failure (``result.failed``) or signal (``result.interrupted``); the
    migrations before it stay applied. Raises MigrationFileError for bad files or a pending
    module that does not import, lacks ``run`` or has a bad phase (before anything runs),
    LockHeld when another runner keeps the lock past ``lock_timeout``, and MigrationFailed when
    the ledger database cannot be used.
    """
    files = discover(settings.path)
    database = ledger.ledger_database(settings.database_url, settings.root)
    fields = {"ledger": database.display, "phase": settings.phase}
    if settings.dry_run:
        with (
            _answer_fields(**fields),
            _ledger_errors(settings, database, MigrationFailed),
            _engine(database) as engine,
        ):
            book = _read_ledger_if_present(database, engine)
            lines = _states(files, book, functools.cache(lambda: runner_active(database, engine)))
            _refuse_renamed(files, book)
            pending = _pending(files, book, settings.phase)
        return ApplyResult(
            pending_before=len(pending),
            phase=settings.phase,
            dry_run=True,
            would_apply=pending,
            ledger=database.display,
            ledger_id=book.ledger_id,
            warnings=_settings_warnings(settings, database) + _warnings(lines, files, book),
        )
    if database.sqlite_path is not None:
        database.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        _answer_fields(**fields),
        _ledger_errors(settings, database, MigrationFailed),
        _engine(database) as engine,
        runner_lock(database, engine, settings.lock_timeout),
    ):
        with engine.begin() as conn:
            ledger_id = ledger.create_tables(conn)
            ledger.settle_interrupted(conn)
        book = _read_ledger(engine)
        lines = _states(files, book, lambda: True)
        result = ApplyResult(
            phase=settings.phase,
            ledger=database.display,
            ledger_id=ledger_id,
            warnings=_settings_warnings(settings, database) + _warnings(lines, files, book),
        )
        with _answer_fields(ledger_id=ledger_id):
            _refuse_renamed(files, book)
            pending = _pending(files, book, settings.phase)
            result.pending_before = len(pending)
            # Import everything first: a broken module must stop the run before anything runs.
            modules = [(migration, _import(migration)) for migration in pending]
        newest = max(book.applied, default="")
        redis = RedisConnector(settings.redis_url)
        try:
            for migration, module in modules:
                if interrupts.pending:
                    result.interrupted = interrupts.pending
                    break
                out_of_order = migration.sort_key < newest
                outcome = _apply_one(
                    settings,
                    engine,
                    redis,
                    migration,
                    module,
                    out_of_order,
                    book.checkpoints.get(migration.sort_key, []),
                )
                if isinstance(outcome, Failure):
                    result.failed = outcome
                    break
                result.applied.append(outcome)
                newest = max(newest, migration.sort_key)
        finally:
            redis.close()
    return result


def _session_settings(conn: Connection, settings: Settings) -> None:
    """``ctx.db``'s PostgreSQL session: application_name, statement_timeout, lock_timeout."""
    if conn.dialect.name != "postgresql":
        return
    values = {"application_name": ledger.MIGRATION_APPLICATION_NAME}
    for name, seconds in (
        ("statement_timeout", settings.statement_timeout),
        ("lock_timeout", settings.pg_lock_timeout),
    ):
        if seconds:
            values[name] = f"{max(round(seconds * 1000), 1)}ms"
    calls = ", ".join(f"set_config('{name}', :{name}, false)" for name in values)
    conn.execute(sa.text(f"SELECT {calls}"), values)


def _seconds(value: float | None) -> str:
    return f"{value:g} s" if value is not None else "?"


def _describe(settings: Settings, error: BaseException, label: str) -> tuple[str, str, str | None]:
    """(what happened, the same plus the traceback tail, the signal if one stopped it), with
    secrets masked: the first goes to the JSON answer, the second to the ledger."""
    signal_name = None
    if isinstance(error, RunnerInterrupted):
        signal_name = error.signal_name
        summary = f"interrupted by {signal_name}"
    elif isinstance(error, KeyboardInterrupt):
        signal_name = "SIGINT"
        summary = "interrupted by SIGINT (KeyboardInterrupt)"
    elif isinstance(error, SystemExit):
        code = "" if error.code is None else repr(error.code)
        summary = f"the migration exited the process (sys.exit({code}))"
    elif isinstance(error, MigrationExited):
        summary = f"the migration exited the process (os._exit({error.code}))"
    else:
        summary = f"{type(error).__name__}: {error}".strip()
        orig = getattr(error, "orig", None)
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate == "57014" and "statement timeout" in str(orig):
            summary = (
                f"statement_timeout ({_seconds(settings.statement_timeout)}) reached in "
                f"migration {label}: {_first_line(error)}. Make the statement faster (index, "
                "ctx.batches) or raise datamig.statement_timeout"
            )
        elif sqlstate == "55P03" and "lock timeout" in str(orig):
            summary = (
                f"lock_timeout ({_seconds(settings.pg_lock_timeout)}) reached in migration "
                f"{label}: {_first_line(error)}. Another session holds a lock it needs; retry "
                "later or raise datamig.pg_lock_timeout"
            )
    summary = settings.redact(summary)
    if len(summary) > ERROR_SUMMARY_CHARS:
        summary = summary[: ERROR_SUMMARY_CHARS - 3] + "..."
    trace = "".join(traceback.format_exception(error))[-TRACEBACK_TAIL_CHARS:]
    return summary, settings.redact(f"{summary}{_TRACE_MARK}{trace}"), signal_name


def _start_attempt(engine: Engine, version: str, name: str, release: str | None) -> int:
    """Commit a ``running`` attempt: if the runner is killed, ``status`` shows the run."""
    with engine.begin() as conn:
        return ledger.insert_attempt(
            conn,
            Attempt(
                version=version,
                name=name,
                status=ledger.RUNNING,
                started_at=ledger.utcnow(),
                finished_at=None,
                error=None,
                release=release,
                host=ledger.this_host(),
            ),
        )


def _settle_failed(settings: Settings, engine: Engine, attempt_id: int, detail: str) -> None:
    """Record the failure in its own transaction (the migration's was rolled back)."""
    try:
        with engine.begin() as conn:
            ledger.settle_attempt(conn, attempt_id, ledger.FAILED, detail)
    except sa.exc.SQLAlchemyError as error:
        log.error(
            "could not record the failed attempt %d: %s",
            attempt_id,
            settings.redact(_first_line(error)),
        )


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
    record: Callable[[Connection, int, int], None],
    checkpoints: list[ledger.Checkpoint],
    failure_prefix: str = "",
) -> Done | Failure:
    """Run ``step(ctx)`` (a migration's ``run`` or ``revert``) in its own transaction, with
    ``record(conn, attempt_id, duration_ms)`` writing its ledger change in that same
    transaction: both commit or neither. On any failure the transaction is rolled back and the
    attempt settled as failed apart."""
    label = f"{version}_{name}"
    log.info("%s %s", verb, label)
    start = time.perf_counter()
    attempt_id = _start_attempt(engine, version, name, release)
    conn: MigrationConnection | None = None
    try:
        conn = MigrationConnection(engine)
        conn.begin()
        _session_settings(conn, settings)
        ctx = MigrationContext(
            db=conn,
            redis_connector=redis,
            log=migration_logger(version, name),
            release=release,
            version=version,
            name=name,
            walker=Walker(conn, version=version, name=name, release=release, saved=checkpoints),
        )
        with interrupts.migration_code(), conn.guarded():
            step(ctx)
        interrupts.check()  # a signal the migration caught still ends it
        duration_ms = _ms(start)
        record(conn, attempt_id, duration_ms)
        conn.commit()
    except (Exception, KeyboardInterrupt, SystemExit, MigrationExited) as error:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.rollback()
        summary, detail, signal_name = _describe(settings, error, label)
        log.error("%s %s failed after %d ms: %s", verb, label, _ms(start), summary)
        _settle_failed(settings, engine, attempt_id, failure_prefix + detail)
        return Failure(version, name, summary, detail, interrupted=signal_name)
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
    log.info("%s: done in %d ms", label, duration_ms)
    return Done(version, name, duration_ms)


def _apply_one(
    settings: Settings,
    engine: Engine,
    redis: RedisConnector,
    migration: MigrationFile,
    module: ModuleType,
    out_of_order: bool,
    checkpoints: list[ledger.Checkpoint],
) -> Done | Failure:
    """``run(ctx)`` and, in the same transaction, its ledger row and its attempt's outcome."""
    assert migration.checksum is not None

    def record(conn: Connection, attempt_id: int, duration_ms: int) -> None:
        ledger.insert_applied(
            conn,
            AppliedRow(
                version=migration.version,
                name=migration.name,
                checksum=migration.checksum,
                applied_at=ledger.utcnow(),
                duration_ms=duration_ms,
                release=settings.release,
                host=ledger.this_host(),
                applied_by=ledger.this_user(),
                out_of_order=out_of_order,
            ),
        )
        ledger.delete_checkpoints(conn, migration.version)
        ledger.settle_attempt(conn, attempt_id, ledger.APPLIED, None)

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
        checkpoints=checkpoints,
    )


# --------------------------------------------------------------------------- revert


def _revert_targets(
    book: LedgerState, version: str | None, release: str | None
) -> list[AppliedRow]:
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
    Stops at the first revert that fails (``result.failed``) or a signal.
    """
    _check_revert_args(version, release)
    file_list = discover(settings.path)
    files = {m.sort_key: m for m in file_list}
    database = ledger.ledger_database(settings.database_url, settings.root)
    if settings.dry_run:
        with (
            _answer_fields(ledger=database.display),
            _ledger_errors(settings, database, MigrationFailed),
            _engine(database) as engine,
        ):
            book = _read_ledger_if_present(database, engine)
        targets = _revert_targets(book, version, release)
        result = RevertResult(dry_run=True, ledger=database.display, ledger_id=book.ledger_id)
        for row in targets:
            migration = files.get(row.sort_key)
            revertible = migration is not None and defines_revert(migration)
            (result.would_revert if revertible else result.not_revertible).append(row)
        return result
    if database.sqlite_path is not None and not database.sqlite_path.exists():
        _revert_targets(LedgerState(), version, release)  # a VERSION is not applied: raises
        return RevertResult(ledger=database.display)
    with (
        _answer_fields(ledger=database.display),
        _ledger_errors(settings, database, MigrationFailed),
        _engine(database) as engine,
        runner_lock(database, engine, settings.lock_timeout),
    ):
        with engine.begin() as conn:
            ledger_id = ledger.create_tables(conn)
            ledger.settle_interrupted(conn)
        book = _read_ledger(engine)
        targets = _revert_targets(book, version, release)
        lines = _states(file_list, book, lambda: True)
        result = RevertResult(
            ledger=database.display,
            ledger_id=ledger_id,
            warnings=_warnings(lines, file_list, book),
        )
        plan: list[tuple[AppliedRow, ModuleType]] = []
        reasons: dict[str, str] = {}
        for row in targets:
            migration = files.get(row.sort_key)
            if migration is None:
                reasons[row.sort_key] = "its file is missing"
                continue
            module = _import(migration)
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
                if interrupts.pending:
                    result.interrupted = interrupts.pending
                    break
                outcome = _revert_one(
                    settings, engine, redis, row, module, book.checkpoints.get(row.sort_key, [])
                )
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
    checkpoints: list[ledger.Checkpoint],
) -> Done | Failure:
    """``revert(ctx)`` and, in the same transaction, the removal of its ledger row."""

    def record(conn: Connection, attempt_id: int, _duration_ms: int) -> None:
        ledger.delete_applied(conn, row.version)
        ledger.delete_checkpoints(conn, row.version)
        ledger.settle_attempt(conn, attempt_id, ledger.REVERTED, None)

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
        # an applied migration has checkpoints only from a revert that failed half way
        checkpoints=checkpoints,
        failure_prefix="revert failed: ",
    )
