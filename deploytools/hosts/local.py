"""The ``local`` target: a directory on this machine, driven like a host (scripts in ``sh``).

Commands behave as over SSH: output streams line by line, a time limit ends the command (the
whole process group it started is killed), and a command that exits while a process it
started keeps its output open returns ``held_open`` instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path

from ..config import Settings, Target
from .transport import (
    HELD_OPEN_GRACE,
    CommandResult,
    InputFeed,
    LineCallback,
    OutputStream,
    Progress,
    raise_callback_error,
    time_limit,
)

_EXIT_POLL = 0.1  # seconds between checks for the shell's exit while its output is open


class LocalTransport:
    """A "host" that is a directory on this machine: scripts run in a local ``sh``."""

    def __init__(self, target: Target, settings: Settings | None = None) -> None:
        self.target = target
        self.settings = settings
        self.commands = 0
        self.connections = 0
        self.bytes_sent = 0

    def run_script(
        self,
        script: str,
        *,
        timeout: float | None = None,
        on_line: LineCallback | None = None,
        feed: InputFeed | None = None,
    ) -> CommandResult:
        limit = time_limit(timeout, self.settings)
        deadline = None if limit is None else time.monotonic() + limit
        self.commands += 1
        process = subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.DEVNULL if feed is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a timeout can end all of it
        )
        assert process.stdout is not None and process.stderr is not None
        if feed is not None:
            stdin = process.stdin
            assert stdin is not None

            def write(data: bytes) -> None:
                stdin.write(data)
                stdin.flush()

            feed.start(write, stdin.close)
        streams = {
            process.stdout.fileno(): OutputStream("stdout", on_line),
            process.stderr.fileno(): OutputStream("stderr", on_line),
        }
        timed_out = held_open = False
        with selectors.DefaultSelector() as selector:
            for fd in streams:
                selector.register(fd, selectors.EVENT_READ)
            exit_code: int | None = None
            quiet_since = time.monotonic()
            while selector.get_map():
                now = time.monotonic()
                if exit_code is None and (exit_code := process.poll()) is not None:
                    quiet_since = now
                if deadline is not None and now >= deadline:
                    timed_out = exit_code is None
                    held_open = exit_code is not None
                    break
                if exit_code is not None and now - quiet_since >= HELD_OPEN_GRACE:
                    held_open = True
                    break
                wait = _EXIT_POLL if exit_code is None else quiet_since + HELD_OPEN_GRACE - now
                if deadline is not None:
                    wait = min(wait, deadline - now)
                for key, _ in selector.select(max(wait, 0.0)):
                    data = os.read(key.fd, 65536)
                    if data:
                        streams[key.fd].feed(data)
                        quiet_since = time.monotonic()
                    else:
                        selector.unregister(key.fd)
        if not (timed_out or held_open):
            # both pipes closed: the shell has exited, or closed them and runs on
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                process.wait(remaining)
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.stdout.close()
        process.stderr.close()
        code = process.wait()  # at once: it exited, or was just killed
        for stream in streams.values():
            stream.finish()
        raise_callback_error(*streams.values())
        out, err = (stream.text for stream in streams.values())
        if timed_out:
            return CommandResult(None, out, err, timed_out=True)
        return CommandResult(code, out, err, held_open=held_open)

    def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        total = local.stat().st_size
        sent = 0
        with local.open("rb") as source, open(remote, "wb") as destination:
            while chunk := source.read(1 << 20):
                destination.write(chunk)
                sent += len(chunk)
                self.bytes_sent += len(chunk)
                if progress:
                    progress(sent, total)
        if progress and total == 0:
            progress(0, 0)

    def reconnect(self) -> None:
        pass

    def close(self) -> None:
        pass
