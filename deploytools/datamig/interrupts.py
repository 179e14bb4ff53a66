"""Signals that stop a run cleanly, and what a migration may not do to the runner's process.

- SIGTERM and SIGINT end the run: the running migration's transaction is rolled back, its
  attempt recorded as failed ("interrupted by SIGTERM"), and the runner exits 1. They raise
  :class:`RunnerInterrupted` (a KeyboardInterrupt, so psycopg cancels a running query and a
  migration's ``except Exception`` does not swallow it) only while migration code runs;
  elsewhere they are remembered and acted on at the next safe point, so the runner's own
  bookkeeping (a ledger row, a checkpoint commit) is never cut in half.
- SIGHUP is ignored: a dropped SSH session must not change the outcome.
- ``os._exit()`` called while migration code runs raises :class:`MigrationExited` instead of
  ending the process, so the attempt is rolled back and recorded as failed (``sys.exit()``
  already raises SystemExit, which the runner catches).

Only the command line installs the handlers; library callers keep Python's defaults.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any, NoReturn


class RunnerInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT reached the runner."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}"


class MigrationExited(BaseException):
    """A migration called ``os._exit(code)``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _exit_raises(code: int) -> NoReturn:
    raise MigrationExited(code)


class Interrupts:
    """The runner's signal state: a signal is raised inside migration code, deferred outside."""

    def __init__(self) -> None:
        self.pending: str | None = None
        self._armed = False

    def install(self) -> None:
        """Handle SIGTERM and SIGINT, ignore SIGHUP (the command line calls this once)."""
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.pending is None:
            self.pending = name
        if self._armed:
            raise RunnerInterrupted(name)

    def check(self) -> None:
        """Raise RunnerInterrupted if a signal arrived (a safe point between two steps)."""
        if self.pending is not None:
            raise RunnerInterrupted(self.pending)

    @contextlib.contextmanager
    def migration_code(self) -> Iterator[None]:
        """While a migration's code runs (its import, ``run`` or ``revert``): signals raise in
        it, and ``os._exit`` raises MigrationExited."""
        self.check()
        real_exit = os._exit
        os._exit = _exit_raises
        self._armed = True
        try:
            yield
        finally:
            self._armed = False
            os._exit = real_exit

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Runner bookkeeping inside migration code (a checkpoint commit): a signal waits until
        the block is done, then raises."""
        armed, self._armed = self._armed, False
        try:
            yield
        finally:
            self._armed = armed
        if armed:
            self.check()


#: The runner's one instance.
interrupts = Interrupts()
