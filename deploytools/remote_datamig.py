"""``invoke datamig.status`` / ``datamig.apply``: the runner on the migration host, over SSH.

The runner runs inside ``current`` (or ``releases/<ID>``) with the same ``--root`` and
``--env-file`` as a deploy; its JSON answer is rendered here (a table) or printed as is.
``datamig.apply`` holds the deploy lock on the migration host while it runs (a deploy takes
that lock first), and stops the runner on Ctrl-C or SIGTERM like a deploy does.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from .config import Settings, with_targets
from .exceptions import ConfigError, DeployToolsError, Interrupted, MigrationFailed
from .hosts import HostGroup, checked
from .interrupts import Interruption, interruptible
from .layout import abort_script, lock_state_script
from .lock import LockOwner
from .output import Reporter
from .runner_client import Runner, RunnerAnswer, migration_failed, migration_label

RELEASE_ID = re.compile(r"\d{14}-[0-9A-Za-z._-]{1,64}")


class RunnerResult(dict):
    """The runner's JSON answer; ``to_json`` gives it back as is for ``--json``."""

    def to_json(self) -> dict[str, Any]:
        return dict(self)

    def error(self) -> MigrationFailed:
        error = migration_failed(self.get("failed") or {}, "")
        error.result = self  # type: ignore[attr-defined]
        return error


def _answer(answer: RunnerAnswer, command: str) -> RunnerResult:
    if answer.data is None or answer.exit_code not in (0, 1):
        raise answer.error(f"datamig {command}")
    return RunnerResult(answer.data)


def remote_status(settings: Settings, *, release: str | None = None) -> dict[str, Any]:
    """The runner's ``status --json`` answer, read inside current or ``releases/<release>``."""
    if release is not None and not RELEASE_ID.fullmatch(release):
        raise ConfigError(
            f"--release {release!r} is not a release id (YYYYMMDDHHMMSS-sha, see `invoke releases`)"
        )
    directory = f"releases/{release}" if release else "current"
    with HostGroup(with_targets(settings, (settings.migrate_on,))) as group:
        runner = Runner(group.transports[settings.migrate_on.name], settings)
        return _answer(runner.status(directory), "status")


def remote_apply(settings: Settings, reporter: Reporter) -> RunnerResult:
    """Apply the pending migrations of ``current`` under the deploy lock of the migration
    host; the answer of ``apply --json`` (``failed`` is set when a migration failed)."""
    owner = LockOwner.mine("datamig.apply", phase="datamig.apply")
    host = settings.migrate_on.name
    with (
        interruptible() as interrupts,
        HostGroup(with_targets(settings, (settings.migrate_on,))) as group,
    ):
        transport = group.transports[host]
        checked(transport.run_script(lock_state_script(transport.target.root, owner)), "lock")
        runner = Runner(transport, settings, on_line=reporter.stream)
        try:
            try:
                answer = runner.call("apply", "current", owner=owner, timeout=_timeout(settings))
            except Interruption as signal:
                with interrupts.shielded():
                    reporter.warn(f"{signal.name}: stopping the migration runner on {host}")
                    runner.stop()
                raise Interrupted(
                    f"datamig.apply interrupted ({signal.name}); the migration in flight was "
                    "rolled back. See `invoke datamig.status`."
                ) from None
            return _answer(answer, "apply")
        finally:
            with interrupts.shielded():
                try:
                    checked(
                        transport.run_script(
                            abort_script(transport.target.root, owner=owner, discard=None)
                        ),
                        "unlock",
                    )
                except DeployToolsError as error:
                    reporter.warn(f"{error}; release it with `invoke lock.release`")


def _timeout(settings: Settings) -> float:
    from .hosts.transport import NO_LIMIT

    return NO_LIMIT if settings.datamig_timeout is None else settings.datamig_timeout


def render_status(data: dict[str, Any], host: str) -> None:
    """The runner's own table (``deploytools.datamig.render``), from its JSON answer."""
    from .datamig.render import render_status as render_table
    from .datamig.runner import StatusReport

    ledger = data.get("ledger") or "?"
    render_table(StatusReport.from_json(data, ledger=f"{ledger}, read on {host}"), sys.stdout)


def render_apply(data: dict[str, Any], reporter: Reporter) -> None:
    for warning in data.get("warnings") or []:
        reporter.warn(str(warning))
    for applied in data.get("applied", []):
        reporter.note(f"applied {migration_label(applied)} in {applied.get('duration_ms')} ms")
    if data.get("failed"):
        failed = data["failed"]
        reporter.error(f"migration {migration_label(failed)} failed: {failed.get('error')}")
    elif not data.get("applied"):
        reporter.note("nothing to apply")
