"""``invoke datamig.status`` / ``datamig.apply``: the runner on the migration host, over SSH.

The runner runs inside ``current`` (or ``releases/<ID>``) with the same ``--root`` and
``--env-file`` as a deploy; its JSON answer is rendered here (a table) or printed as is.
"""

from __future__ import annotations

import sys
from typing import Any

from .config import Settings, with_targets
from .exceptions import MigrationFailed
from .hosts import HostGroup
from .output import Reporter
from .runner_client import migration_failed, migration_label, run_runner


class RunnerResult(dict):
    """The runner's JSON answer; ``to_json`` gives it back as is for ``--json``."""

    def to_json(self) -> dict[str, Any]:
        return dict(self)

    def error(self) -> MigrationFailed:
        error = migration_failed(self.get("failed") or {}, "")
        error.result = self  # type: ignore[attr-defined]
        return error


def _run(settings: Settings, directory: str, command: str, args: list[str]) -> RunnerResult:
    with HostGroup(with_targets(settings, (settings.migrate_on,))) as group:
        transport = group.transports[settings.migrate_on.name]
        answer = run_runner(transport, settings, directory=directory, command=command, args=args)
    if answer.data is None or answer.exit_code not in (0, 1):
        raise answer.error(f"datamig {command}")
    return RunnerResult(answer.data)


def remote_status(settings: Settings, *, release: str | None = None) -> dict[str, Any]:
    """The runner's ``status --json`` answer, read inside current or ``releases/<release>``."""
    directory = f"releases/{release}" if release else "current"
    return _run(settings, directory, "status", [])


def remote_apply(settings: Settings) -> RunnerResult:
    """Apply the pending migrations of ``current``; the answer of ``apply --json`` (its
    ``failed`` is set when a migration failed: ``.error()`` is then the exception to raise)."""
    return _run(settings, "current", "apply", ["--lock-timeout", str(int(settings.lock_timeout))])


def render_status(data: dict[str, Any], host: str) -> None:
    """The runner's own table (``deploytools.datamig.render``), from its JSON answer."""
    from .datamig.render import render_status as render_table
    from .datamig.runner import StatusReport

    render_table(StatusReport.from_json(data, ledger=f"read on {host}"), sys.stdout)


def render_apply(data: dict[str, Any], reporter: Reporter) -> None:
    for applied in data.get("applied", []):
        reporter.note(f"applied {migration_label(applied)} in {applied.get('duration_ms')} ms")
    if data.get("failed"):
        failed = data["failed"]
        reporter.error(f"migration {migration_label(failed)} failed: {failed.get('error')}")
    elif not data.get("applied"):
        reporter.note("nothing to apply")
