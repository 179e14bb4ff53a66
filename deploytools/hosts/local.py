"""The ``local`` target: a directory on this machine, driven like a host (scripts in ``sh``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..config import Target
from .transport import CommandResult, Progress


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
