"""How the deploy reaches a host: one interface, two transports.

The deploy code only calls ``run_script`` (a POSIX ``sh`` script, run as one remote command)
and ``put`` (a file copy with progress); it never knows whether the host is a directory on
this machine (``LocalTransport``) or a server behind SSH (``deploytools.ssh.SSHTransport``).
Each transport counts the commands it ran and the connections it opened, for ``--json``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .config import Settings, Target

Progress = Callable[[int, int], None]  # (bytes sent so far, total bytes)


@dataclass(frozen=True)
class CommandResult:
    """What one remote command left behind. ``exit_code`` is None when the connection died
    before the command reported one (its outcome on the host is then unknown)."""

    exit_code: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def connection_lost(self) -> bool:
        return self.exit_code is None


class Transport(Protocol):
    """A host the deploy can run scripts on and copy files to."""

    target: Target
    commands: int
    connections: int

    def run_script(self, script: str, *, timeout: float | None = None) -> CommandResult:
        """Run ``script`` with ``sh`` on the host (one remote command)."""
        ...

    def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        """Copy a local file to an absolute path on the host."""
        ...

    def reconnect(self) -> None:
        """Drop the current connection (if any) and open a new one on next use."""
        ...

    def close(self) -> None: ...


class LocalTransport:
    """A "host" that is a directory on this machine: scripts run in a local ``sh``."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.commands = 0
        self.connections = 0

    def run_script(self, script: str, *, timeout: float | None = None) -> CommandResult:
        self.commands += 1
        completed = subprocess.run(
            ["sh", "-c", script],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
        return CommandResult(completed.returncode, completed.stdout, completed.stderr)

    def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        total = local.stat().st_size
        sent = 0
        with local.open("rb") as source, open(remote, "wb") as destination:
            while chunk := source.read(1 << 20):
                destination.write(chunk)
                sent += len(chunk)
                if progress:
                    progress(sent, total)
        if progress and total == 0:
            progress(0, 0)

    def reconnect(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_transport(target: Target, settings: Settings) -> Transport:
    """The transport for ``target``; SSH connects lazily, on its first command."""
    if target.is_local:
        if shutil.which("sh") is None:  # pragma: no cover - every POSIX system has sh
            raise RuntimeError("no 'sh' on this machine")
        return LocalTransport(target)
    from .ssh import SSHTransport

    return SSHTransport(target, settings)
