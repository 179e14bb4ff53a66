"""The data migration runner, driven from here: ``python -m deploytools.datamig`` on a host.

The runner always runs on the host, inside a release, with the host's ``--root`` and
``shared/.env`` (where production secrets live). This module builds its command line (every
value quoted), reads its one JSON answer, and turns a bad answer into the right error.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from .config import Settings, Target
from .exceptions import DeployToolsError, LockHeld, MigrationFailed, ReleaseNotFound, UsageError
from .hosts.transport import Transport
from .layout import Code, datamig_script

RUNNER_MODULE = "deploytools.datamig"


@dataclass(frozen=True)
class RunnerAnswer:
    """What one runner invocation returned. ``data`` is its JSON object, or None when the
    output was not one (a crash, a dead session)."""

    host: str
    exit_code: int | None
    data: dict[str, Any] | None
    stderr: str

    @property
    def connection_lost(self) -> bool:
        return self.exit_code is None

    def stderr_tail(self, lines: int = 15) -> str:
        return "\n".join(self.stderr.strip().splitlines()[-lines:])

    def error(self, what: str) -> DeployToolsError:
        """The runner's failure as the exception of the matching exit code."""
        if self.exit_code == Code.NO_RELEASE:
            return ReleaseNotFound(f"{self.stderr_tail()} (host {self.host})")
        detail = self.stderr_tail() or "no output"
        message = f"{what} on {self.host} failed (exit {self.exit_code}): {detail}"
        if self.exit_code == 2:
            return UsageError(message)
        if self.exit_code == 3:
            return LockHeld(message)
        return MigrationFailed(message)


def python_argv(target: Target) -> list[str]:
    """``deploy.python`` as argv: a path, or a command such as ``/usr/bin/env python3``."""
    return shlex.split(target.python)


def run_runner(
    transport: Transport,
    settings: Settings,
    *,
    directory: str,
    command: str,
    args: list[str],
) -> RunnerAnswer:
    """``datamig <command> --json <args>`` in ``<root>/<directory>`` on the host: one command."""
    argv = [
        *python_argv(transport.target),
        "-m",
        RUNNER_MODULE,
        command,
        "--json",
        "--path",
        settings.migrations_path,
        *args,  # after the defaults, so an explicit --path wins
    ]
    result = transport.run_script(datamig_script(transport.target.root, directory, argv))
    data = None
    try:
        parsed = json.loads(result.stdout)
        if isinstance(parsed, dict):
            data = parsed
    except ValueError:
        pass
    return RunnerAnswer(transport.target.name, result.exit_code, data, result.stderr)


def migration_failed(entry: dict[str, Any], where: str) -> MigrationFailed:
    """The error for a runner's ``failed`` entry; ``.migration`` (version and name) is what
    revisions.jsonl records for the failed attempt."""
    error = MigrationFailed(
        f"migration {migration_label(entry)} failed{where}: {entry.get('error')}"
    )
    error.migration = {"version": entry.get("version"), "name": entry.get("name")}  # type: ignore[attr-defined]
    return error


def migration_label(entry: dict[str, Any] | None) -> str:
    """``202002111319_migrate_flags_to_redis`` for a runner JSON entry."""
    if not entry:
        return "?"
    return f"{entry.get('version')}_{entry.get('name')}"
