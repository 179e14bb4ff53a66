"""``ctx``, what a migration's ``run(ctx)`` and ``revert(ctx)`` receive.

``ctx.db`` is the SQLAlchemy Connection inside the migration's own transaction (the ledger row
is written in it too, so do not commit or roll back yourself). Put execution options on
statements (``text(...).execution_options(yield_per=1000)``): ``ctx.db.execution_options()``
changes the connection itself for the rest of the migration. ``ctx.redis`` is created on first
use from REDIS_URL, so migrations that never touch Redis need no Redis at all.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from deploytools.exceptions import UsageError
from deploytools.redact import display_url

if TYPE_CHECKING:
    import redis


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

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


class MigrationContext:
    """The ``ctx`` argument: ``db``, ``redis``, ``log``, ``release``, ``version``, ``name``."""

    def __init__(
        self,
        *,
        db: Connection,
        redis_connector: RedisConnector,
        log: logging.Logger,
        release: str | None,
        version: str,
        name: str,
    ) -> None:
        self.db = db
        self.log = log
        self.release = release
        self.version = version
        self.name = name
        self._redis = redis_connector

    @property
    def redis(self) -> redis.Redis:
        """A ``redis.Redis`` client for REDIS_URL, connected on first use."""
        return self._redis.client

    def __repr__(self) -> str:
        return f"<MigrationContext {self.version}_{self.name} release={self.release!r}>"


def migration_logger(version: str, name: str) -> logging.Logger:
    """``ctx.log``: a child of the ``deploytools.datamig`` logger, named after the migration."""
    return logging.getLogger(f"deploytools.datamig.migrations.{version}_{name}")
