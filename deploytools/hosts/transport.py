"""How the deploy reaches a host: one interface, two transports.

The deploy code only calls ``run_script`` (a POSIX ``sh`` script, run as one remote command)
and ``put`` (a file copy with progress); it never knows whether the host is a directory on
this machine (``hosts.local.LocalTransport``) or a server behind SSH (``hosts.ssh.SSHTransport``).
Each transport counts the commands it ran, the connections it opened and the bytes it sent,
for ``--json``.

Every command has a time limit (``deploy.command_timeout`` unless the caller gives one) and
streams its output line by line to an optional ``on_line`` callback as the lines arrive.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import queue
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import Settings, Target

Progress = Callable[[int, int], None]  # (bytes sent so far, total bytes)
LineCallback = Callable[[str, str], None]  # (stream: "stdout" or "stderr", line without "\n")

NO_LIMIT = math.inf
"""A ``timeout`` meaning "no time limit" (``None`` means the configured default)."""

HELD_OPEN_GRACE = 2.0
"""Seconds a command may keep its output open, without writing, after it exited: past that,
something it started (a daemon) holds the output and the command returns ``held_open``."""

DEFAULT_COMMAND_TIMEOUT = 600.0
DEFAULT_KEEPALIVE = 15.0


@dataclass(frozen=True)
class CommandResult:
    """What one remote command left behind.

    ``exit_code`` is None when there is no exit status: the connection died before the command
    reported one (its outcome on the host is then unknown), or it ran past its timeout
    (``timed_out``; it may still be running on the host). ``held_open`` means it exited with
    ``exit_code`` but something it started keeps its output open (a daemon started without
    redirecting stdout and stderr)."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    held_open: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def connection_lost(self) -> bool:
        return self.exit_code is None and not self.timed_out


class Transport(Protocol):
    """A host the deploy can run scripts on and copy files to."""

    target: Target
    commands: int  # remote exec requests (an SFTP session is not a command)
    connections: int  # connections opened
    bytes_sent: int  # bytes written to this host (SSH: on the wire; local: copied by put)

    def run_script(
        self,
        script: str,
        *,
        timeout: float | None = None,
        on_line: LineCallback | None = None,
        feed: InputFeed | None = None,
    ) -> CommandResult:
        """Run ``script`` with ``sh`` on the host (one remote command), for at most
        ``timeout`` seconds (None: ``deploy.command_timeout``; ``NO_LIMIT``: no limit).
        ``on_line(stream, line)`` gets every line as it arrives, from a reader thread. The
        command's stdin is empty, or what ``feed`` is given while it runs."""
        ...

    def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        """Copy a local file to an absolute path on the host; a TransportError when no bytes
        move for ``deploy.command_timeout`` seconds."""
        ...

    def reconnect(self) -> None:
        """Drop the current connection (if any) and open a new one on next use."""
        ...

    def close(self) -> None: ...


def command_timeout(settings: Settings | None) -> float:
    """``deploy.command_timeout`` in seconds (``NO_LIMIT`` when set to 0 or none)."""
    value = getattr(settings, "command_timeout", DEFAULT_COMMAND_TIMEOUT)
    return float(value) if value else NO_LIMIT


def keepalive_interval(settings: Settings | None) -> float:
    """``deploy.keepalive`` in seconds; 0 turns keepalives off."""
    value = getattr(settings, "keepalive", DEFAULT_KEEPALIVE)
    return float(value) if value else 0.0


def time_limit(timeout: float | None, settings: Settings | None) -> float | None:
    """The seconds a command may run, or None for no limit."""
    limit = command_timeout(settings) if timeout is None else float(timeout)
    return None if math.isinf(limit) else max(limit, 0.0)


class OutputStream:
    """One output stream of a command: decodes bytes as UTF-8 as they arrive, keeps the text,
    and hands every complete line to ``on_line`` (the last line too, at the end, even without
    a newline). An exception from ``on_line`` stops the callbacks, not the reading (a stuck
    reader would leave the command hanging); the caller raises it once the command is over."""

    def __init__(self, name: str, on_line: LineCallback | None) -> None:
        self.name = name
        self.on_line = on_line
        self.received = 0  # bytes so far, for "is output still moving?"
        self.error: BaseException | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._parts: list[str] = []
        self._partial = ""

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        self._add(self._decoder.decode(data))

    def finish(self) -> None:
        """End of the stream: flush the decoder and the last line."""
        self._add(self._decoder.decode(b"", final=True))
        if self._partial:
            self._emit(self._partial)
            self._partial = ""

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def _add(self, text: str) -> None:
        if not text:
            return
        self._parts.append(text)
        if self.on_line is None:
            return
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._emit(line)

    def _emit(self, line: str) -> None:
        if self.on_line is None or self.error is not None:
            return
        try:
            self.on_line(self.name, line.removesuffix("\r"))
        except BaseException as error:  # re-raised by the transport when the command is over
            self.error = error


class InputFeed:
    """What a running command reads on its stdin, given while it runs: a conversation (the
    migration runner's session answers each line it reads). ``close`` ends its stdin."""

    def __init__(self) -> None:
        self._items: queue.Queue[bytes | None] = queue.Queue()

    def send(self, text: str) -> None:
        self._items.put(text.encode())

    def close(self) -> None:
        self._items.put(None)

    def forward(self, write: Callable[[bytes], object], end: Callable[[], object]) -> None:
        """Copy what is sent to ``write`` until ``close``, then ``end`` (in its own thread);
        a command that stopped reading (gone) ends the forwarding quietly."""
        try:
            while (item := self._items.get()) is not None:
                write(item)
        except (OSError, EOFError, ValueError):
            return
        with contextlib.suppress(OSError, EOFError, ValueError):
            end()

    def start(self, write: Callable[[bytes], object], end: Callable[[], object]) -> None:
        thread = threading.Thread(target=self.forward, args=(write, end), name="stdin", daemon=True)
        thread.start()


def raise_callback_error(*streams: OutputStream) -> None:
    """Re-raise the first exception an ``on_line`` callback raised."""
    for stream in streams:
        if stream.error is not None:
            raise stream.error


def open_transport(target: Target, settings: Settings) -> Transport:
    """The transport for ``target``; SSH connects lazily, on its first command."""
    if target.is_local:
        if shutil.which("sh") is None:  # pragma: no cover - every POSIX system has sh
            raise RuntimeError("no 'sh' on this machine")
        from .local import LocalTransport

        return LocalTransport(target, settings)
    from .ssh import SSHTransport

    return SSHTransport(target, settings)
