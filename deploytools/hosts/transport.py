"""How the deploy reaches a host: one interface, two transports.

The deploy code only calls ``run_script`` (a POSIX ``sh`` script, run as one remote command)
and ``put`` (a file copy with progress); it never knows whether the host is a directory on
this machine (``hosts.local.LocalTransport``) or a server behind SSH (``hosts.ssh.SSHTransport``).
Each transport counts the commands it ran and the connections it opened, for ``--json``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import Settings, Target

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


def open_transport(target: Target, settings: Settings) -> Transport:
    """The transport for ``target``; SSH connects lazily, on its first command."""
    if target.is_local:
        if shutil.which("sh") is None:  # pragma: no cover - every POSIX system has sh
            raise RuntimeError("no 'sh' on this machine")
        from .local import LocalTransport

        return LocalTransport(target)
    from .ssh import SSHTransport

    return SSHTransport(target, settings)
