"""Where the runner's output goes: stderr, line by line, masked, and never fatal.

While a command runs, file descriptors 1 and 2 are a pipe read by a thread (:class:`OutputPump`)
that masks each complete line and writes it to the real stderr at once. So ``print()``, log
lines, a subprocess a migration starts and even ``os.write(1, ...)`` reach the deploy's output
as they happen, passwords masked, and the real stdout stays free for the one answer (a JSON
object or a table). If the real stderr goes away (the SSH session dropped: EPIPE), lines are
dropped and the run goes on: its outcome is in the ledger.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

#: A line longer than this is passed on in pieces (a secret split across two pieces could
#: escape masking, so the limit is generous).
MAX_LINE_BYTES = 1 << 20


def _dup_or_devnull(fd: int) -> int:
    """A duplicate of ``fd``, or of /dev/null when ``fd`` is not open."""
    try:
        return os.dup(fd)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a pipe may take less at once)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class OutputPump:
    """Redirects fds 1 and 2 into a pipe; a thread masks each line and copies it to stderr."""

    def __init__(self, redactor: Callable[[str], str]) -> None:
        self.redactor = redactor
        self.stderr_lost = False
        self._thread: threading.Thread | None = None
        self._stdout_fd = -1
        self._stderr_fd = -1
        self._read_fd = -1

    def start(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self._stdout_fd = _dup_or_devnull(1)
        self._stderr_fd = _dup_or_devnull(2)
        self._read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        # Python's own streams on the pipe: a line reaches the pump as soon as it is complete.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._pump, name="datamig-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            if b"\n" in chunk:
                complete, _, pending = pending.rpartition(b"\n")
                self._emit(complete + b"\n")
            if len(pending) > MAX_LINE_BYTES:
                self._emit(pending)
                pending = b""
        if pending:
            self._emit(pending)

    def _emit(self, data: bytes) -> None:
        if self.stderr_lost:
            return
        text = self.redactor(data.decode("utf-8", "replace"))
        try:
            write_all(self._stderr_fd, text.encode("utf-8", "replace"))
        except OSError:
            self.stderr_lost = True  # the session is gone: drop output, keep working

    def answer(self, text: str) -> None:
        """One line on the real stdout while fds 1 and 2 are redirected (a session's
        answers); dropped if the client went away."""
        with contextlib.suppress(OSError):
            write_all(self._stdout_fd if self._thread is not None else 1, text.encode())

    def stop(self, timeout: float = 2.0) -> None:
        """Put fds 1 and 2 back and let the thread pass on what is left. A process a migration
        left running may keep the pipe open: then wait at most ``timeout`` seconds."""
        if self._thread is None:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(self._stdout_fd, 1)
        os.dup2(self._stderr_fd, 2)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.stderr_lost = True  # its last lines are dropped; its fds stay open until exit
        else:
            for fd in (self._stdout_fd, self._stderr_fd, self._read_fd):
                os.close(fd)
        self._thread = None


class SafeWriter(io.TextIOBase):
    """A text stream on a file descriptor that drops what it cannot write (EPIPE) instead of
    failing: the answer of a runner whose client went away is lost, never its outcome."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lost = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                write_all(self.fd, text.encode("utf-8", "replace"))
            except OSError:
                self.lost = True
        return len(text)

    def isatty(self) -> bool:
        try:
            return os.isatty(self.fd)
        except OSError:
            return False

    def fileno(self) -> int:
        return self.fd


class RedactingWriter(io.TextIOBase):
    """A text stream that masks passwords line by line before writing to ``target``."""

    def __init__(self, target: TextIO, redactor: Callable[[str], str]) -> None:
        self.target = target
        self.redactor = redactor
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in text:
            complete, _, self._pending = self._pending.rpartition("\n")
            self.target.write(self.redactor(complete + "\n"))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.target.write(self.redactor(self._pending))
            self._pending = ""
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()


def quiet_streams_at_exit() -> None:
    """Point fds 1 and 2 at /dev/null if flushing them fails, so a lost client cannot turn the
    runner's exit code into Python's 120 (a failed flush of stdout at exit)."""
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            stream.flush()
        except (OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)


class LogFormatter(logging.Formatter):
    """Log lines in UTC with short logger names: ``12:00:01Z INFO    datamig: applying ...``,
    ``... [202001010000_backfill] ...`` for a migration's own ``ctx.log``."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(label)s %(message)s", "%H:%M:%SZ")

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        if name.startswith("deploytools.datamig.migrations."):
            record.label = f"[{name.rsplit('.', 1)[1]}]"
        elif name.startswith("deploytools"):
            record.label = "datamig:"
        else:
            record.label = f"{name}:"
        return super().format(record)


def configure_logging() -> logging.Handler:
    """Logs to stderr (the pump masks them): INFO from the runner and migrations, WARNING from
    everything else."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("deploytools").setLevel(logging.INFO)
    return handler
