"""``ctx``, what a migration's ``run(ctx)`` and ``revert(ctx)`` receive.

``ctx.db`` is a SQLAlchemy Connection inside the migration's own transaction; the ledger row is
written in it too, so the runner alone ends that transaction: ``commit()``, ``rollback()``,
``begin()`` and ``close()`` (and ``COMMIT``/``ROLLBACK`` sent as SQL) raise
:class:`TransactionControlError` while the migration runs. Put execution options on statements
(``text(...).execution_options(yield_per=1000)``): ``ctx.db.execution_options()`` changes the
connection itself for the rest of the migration. ``ctx.redis`` is created on first use from
REDIS_URL, so migrations that never touch Redis need no Redis at all. ``ctx.batches`` walks a
large select in committed, resumable batches (:mod:`deploytools.datamig.batches`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from deploytools.exceptions import UsageError
from deploytools.redact import display_url

if TYPE_CHECKING:
    import redis

    from deploytools.datamig.batches import Walker


class TransactionControlError(RuntimeError):
    """A migration tried to end or replace the transaction the runner gave it."""


def _refusal(what: str) -> TransactionControlError:
    return TransactionControlError(
        f"a migration must not {what}: its changes and its ledger row commit together; "
        "raise to fail (everything is then rolled back), or use ctx.batches() for work that "
        "must commit as it goes"
    )


# COMMIT, END, ROLLBACK (but not ROLLBACK TO SAVEPOINT), ABORT, BEGIN, START TRANSACTION.
_TRANSACTION_SQL = re.compile(
    r"\s*(?:COMMIT|END|ABORT|BEGIN|START\s+TRANSACTION|ROLLBACK(?!\s+(?:WORK\s+|TRANSACTION\s+)?TO\b))\b",
    re.IGNORECASE,
)


class MigrationConnection(Connection):
    """``ctx.db``: a real Connection whose transaction belongs to the runner while guarded."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self._guarded = False
        sa.event.listen(self, "before_cursor_execute", _refuse_transaction_sql)

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """Migration code runs inside: transaction control is refused."""
        self._guarded = True
        try:
            yield
        finally:
            self._guarded = False

    @contextlib.contextmanager
    def unguarded(self) -> Iterator[None]:
        """The runner's own commit in the middle of migration code (a batch checkpoint)."""
        guarded, self._guarded = self._guarded, False
        try:
            yield
        finally:
            self._guarded = guarded

    def _refuse(self, what: str) -> None:
        if self._guarded:
            raise _refusal(what)

    def commit(self) -> None:
        self._refuse("commit")
        super().commit()

    def rollback(self) -> None:
        self._refuse("roll back")
        super().rollback()

    def begin(self) -> Any:
        self._refuse("begin a transaction of its own")
        return super().begin()

    def close(self) -> None:
        self._refuse("close ctx.db")
        super().close()


def _refuse_transaction_sql(
    conn: Connection, _cursor: Any, statement: str, *_args: Any, **_kwargs: Any
) -> None:
    if getattr(conn, "_guarded", False) and _TRANSACTION_SQL.match(statement):
        raise _refusal(f"run {statement.split(None, 1)[0].upper()} as SQL")


class RedisConnector:
    """A Redis client made on first use and shared by the migrations of one run."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            if not self.url:
                raise UsageError(
                    "this migration uses ctx.redis but REDIS_URL is not set; set REDIS_URL in "
                    "<root>/shared/.env (read with --env-file) or in the environment"
                )
            import redis  # only runs that use Redis pay for importing it

            try:
                self._client = redis.Redis.from_url(self.url)
            except ValueError as error:
                raise UsageError(
                    f"REDIS_URL {display_url(self.url)!r} is not a Redis URL: {error}"
                ) from None
        return self._client

    def ping(self, timeout: float = 5.0) -> None:
        """Connect and PING with a short timeout; UsageError naming the masked URL if it fails."""
        import redis

        try:
            client = redis.Redis.from_url(
                self.url or "", socket_connect_timeout=timeout, socket_timeout=timeout
            )
        except ValueError as error:
            raise UsageError(
                f"REDIS_URL {display_url(self.url or '')!r} is not a Redis URL: {error}"
            ) from None
        try:
            client.ping()
        except redis.RedisError as error:
            raise UsageError(
                f"Redis at REDIS_URL {display_url(self.url or '')} does not answer: {error}. "
                "Check REDIS_URL (in <root>/shared/.env) and that Redis is up"
            ) from None
        finally:
            client.close()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


class MigrationContext:
    """The ``ctx`` argument: ``db``, ``redis``, ``log``, ``release``, ``version``, ``name``,
    and ``batches()``."""

    def __init__(
        self,
        *,
        db: Connection,
        redis_connector: RedisConnector,
        log: logging.Logger,
        release: str | None,
        version: str,
        name: str,
        walker: Walker | None = None,
    ) -> None:
        self.db = db
        self.log = log
        self.release = release
        self.version = version
        self.name = name
        self._redis = redis_connector
        self._walker = walker

    @property
    def redis(self) -> redis.Redis:
        """A ``redis.Redis`` client for REDIS_URL, connected on first use."""
        return self._redis.client

    def batches(
        self,
        query: sa.Select[Any],
        *,
        key: Any,
        size: int = 1000,
        pause: float = 0,
        count: bool = True,
    ) -> Iterator[Sequence[Row[Any]]]:
        """Walk ``query`` in keyset order of ``key`` (a column of the select, or a tuple of
        columns: unique and not null, ideally indexed) and yield lists of at most ``size``
        rows. After each batch its writes commit together with a checkpoint, so a run that was
        killed or failed resumes after the last committed batch; ``pause`` seconds are slept
        between batches. ``count`` counts the select once at the start, for the ETA."""
        from deploytools.datamig.batches import walk

        return walk(self, query, key=key, size=size, pause=pause, count=count)

    def __repr__(self) -> str:
        return f"<MigrationContext {self.version}_{self.name} release={self.release!r}>"


def migration_logger(version: str, name: str) -> logging.Logger:
    """``ctx.log``: a child of the ``deploytools.datamig`` logger, named after the migration."""
    return logging.getLogger(f"deploytools.datamig.migrations.{version}_{name}")
