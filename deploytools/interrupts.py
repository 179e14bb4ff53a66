"""Ctrl-C and SIGTERM (a CI cancel) end a deploy like any failure: the undo runs.

While a command runs, ``SIGINT`` and ``SIGTERM`` raise :class:`Interruption` in the main thread
(a ``KeyboardInterrupt``, so the waiting code sees it at once). While the undo runs, further
signals are noted and ignored (:meth:`Interrupts.shielded`): a second Ctrl-C must not leave
hosts half put back. Every remote command is bounded by a time limit, so the undo ends.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType


class Interruption(KeyboardInterrupt):
    """The deploying process got SIGINT (Ctrl-C) or SIGTERM."""

    def __init__(self, name: str = "SIGINT") -> None:
        super().__init__(name)
        self.name = name


class Interrupts:
    """The signal handling of one command."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._shielded = 0

    def _handle(self, number: int, _frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        self.received.append(name)
        if self._shielded:
            print(
                f"\n{name} received: putting the hosts back first (this cannot be cut short)",
                file=sys.stderr,
                flush=True,
            )
            return
        raise Interruption(name)

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Signals during the block are noted, not raised."""
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1


@contextlib.contextmanager
def interruptible() -> Iterator[Interrupts]:
    """Install the handlers for the block (main thread only; elsewhere signals are left
    alone)."""
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, interrupts._handle)
    try:
        yield interrupts
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
