"""One migration runner at a time per ledger.

PostgreSQL: a session-level advisory lock, held on a dedicated connection of an unpooled engine
(with a pool, ``close()`` would hand the session, lock included, back to the pool). SQLite: an
``flock`` on ``datamig.sqlite3.lock`` beside the database. Either way the lock belongs to the
runner's process: if it dies, even by SIGKILL, the server or the kernel frees it at once.

Both are taken by polling until the timeout (a SIGTERM ends the wait), then fail with LockHeld
naming the holder: for PostgreSQL from ``application_name`` (``deploytools-datamig host=H
pid=P``), for SQLite from the host and pid the holder writes into the lock file.
:func:`runner_active` tells ``status`` whether a runner holds the lock, without taking it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from deploytools.datamig.interrupts import interrupts
from deploytools.datamig.ledger import LedgerDatabase, this_host, utcnow
from deploytools.exceptions import LockHeld

#: The advisory lock key: a fixed 64-bit number derived from the package name, so every runner
#: on any host agrees on it (advisory locks are per database).
LOCK_KEY = int.from_bytes(hashlib.sha256(b"deploytools.datamig").digest()[:8], "big", signed=True)
POLL_SECONDS = 0.1

_HOLDER_SQL = sa.text(
    """
    SELECT a.application_name, a.pid, a.client_addr::text AS client_addr, a.backend_start
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = :hi AND l.objid::bigint = :lo AND l.objsubid = 1
    """
)


def _key_halves(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as two unsigned 32-bit halves."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def _lock_held(what: str, holder: str | None, timeout: float) -> LockHeld:
    return LockHeld(
        f"another migration runner holds the lock on {what}: "
        f"{holder or 'holder unknown (it may just have finished)'}; waited {timeout:g} s. "
        "Retry when it has finished, or pass a larger --lock-timeout"
    )


def _poll(try_once: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        interrupts.check()
        if try_once():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(POLL_SECONDS, remaining))


class AdvisoryLock:
    """A PostgreSQL session advisory lock on a connection of its own."""

    def __init__(self, engine: Engine, what: str, key: int = LOCK_KEY) -> None:
        self.engine = engine
        self.what = what
        self.key = key
        self._conn: Connection | None = None

    def acquire(self, timeout: float) -> None:
        """Poll ``pg_try_advisory_lock`` for up to ``timeout`` seconds, else raise LockHeld."""
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = _poll(
                lambda: bool(
                    conn.execute(
                        sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}
                    ).scalar_one()
                ),
                timeout,
            )
            if not got:
                raise _lock_held(self.what, self.holder(conn), timeout)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def holder(self, conn: Connection) -> str | None:
        """Who holds the lock, from ``pg_stat_activity``; None if nobody does any more."""
        hi, lo = _key_halves(self.key)
        row = conn.execute(_HOLDER_SQL, {"hi": hi, "lo": lo}).mappings().first()
        if row is None:
            return None
        since = row["backend_start"].isoformat(timespec="seconds") if row["backend_start"] else "?"
        name = row["application_name"] or "a session without application_name"
        return (
            f"{name} (PostgreSQL backend pid {row['pid']}, "
            f"client {row['client_addr'] or 'local socket'}, connected since {since})"
        )

    def release(self) -> None:
        """Unlock and close the connection (closing alone would also free it, server side)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            with contextlib.suppress(sa.exc.DBAPIError):
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        finally:
            conn.close()


class FileLock:
    """An exclusive ``flock`` on a file, which records its holder's host and pid."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def _try(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def acquire(self, timeout: float) -> None:
        """Poll the ``flock`` for up to ``timeout`` seconds, else raise LockHeld."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _poll(lambda: self._try(fd), timeout):
                raise _lock_held(self.what, self.holder(), timeout)
            owner = {"host": this_host(), "pid": os.getpid(), "since": utcnow().isoformat()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(owner).encode() + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def holder(self) -> str | None:
        """The host and pid written by the holder, if it wrote them yet."""
        try:
            owner = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        if not isinstance(owner, dict):
            return None
        return (
            f"deploytools-datamig host={owner.get('host')} pid={owner.get('pid')} "
            f"(since {owner.get('since')}, lock file {self.path})"
        )

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def lock_file_path(database: LedgerDatabase) -> Path:
    """``datamig.sqlite3.lock`` beside the SQLite ledger."""
    assert database.sqlite_path is not None
    return database.sqlite_path.with_name(database.sqlite_path.name + ".lock")


@contextlib.contextmanager
def runner_lock(database: LedgerDatabase, engine: Engine, timeout: float) -> Iterator[None]:
    """Hold the ledger's runner lock for the ``with`` block (LockHeld after ``timeout`` s)."""
    lock: AdvisoryLock | FileLock
    if database.is_sqlite:
        lock = FileLock(lock_file_path(database), f"the SQLite ledger {database.sqlite_path}")
    else:
        lock = AdvisoryLock(engine, f"the ledger database {database.display}")
    lock.acquire(timeout)
    try:
        yield
    finally:
        lock.release()


def runner_active(database: LedgerDatabase, engine: Engine) -> bool:
    """Whether a runner holds the ledger's lock right now, found without taking it (PostgreSQL:
    ``pg_locks``) or by a shared ``flock`` probe that is let go at once (SQLite; a missing lock
    file means no runner). Creates nothing."""
    if database.is_sqlite:
        try:
            fd = os.open(lock_file_path(database), os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases the probe
        return False
    hi, lo = _key_halves(LOCK_KEY)
    with engine.connect() as conn:
        return conn.execute(_HOLDER_SQL, {"hi": hi, "lo": lo}).first() is not None
