"""``invoke rollback``: switch every host back to the rollback target (or ``--to ID``).

The target comes from ``revisions.jsonl`` (DESIGN §2), never from directory times, and must
exist on every host; otherwise nothing changes (exit 2). With migration-aware rollback, the
``revert()`` of every migration the rolled-back release applied runs first, newest first, on
the migration host; a migration without ``revert`` stops the rollback before any change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .exceptions import (
    DeployToolsError,
    NeedsPerson,
    ReleaseNotFound,
    UsageError,
)
from .hosts import HostGroup, checked
from .layout import HostState, abort_script, lock_state_script, switch_and_unlock_script
from .lock import LockOwner, deployer, utc_now
from .output import Reporter
from .revisions import Revision, rollback_target
from .runner_client import migration_label, run_runner


@dataclass
class RollbackResult:
    release: str
    previous: str | None
    reverted: dict[str, Any] | None = None
    hosts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "succeeded",
            "release": self.release,
            "previous": self.previous,
            "reverted": self.reverted,
            "hosts": self.hosts,
        }


def rollback(
    settings: Settings,
    *,
    to: str | None = None,
    revert_migrations: bool | None = None,
    reporter: Reporter | None = None,
) -> RollbackResult:
    """Roll every host back; raises UsageError/ReleaseNotFound (nothing changed), LockHeld,
    or NeedsPerson when a revert failed."""
    reporter = reporter or Reporter()
    revert = settings.revert_on_rollback if revert_migrations is None else revert_migrations
    owner = LockOwner.mine(to or "rollback")
    with HostGroup(settings) as group:
        states: dict[str, HostState] = {}

        def lock(transport) -> None:
            result = transport.run_script(lock_state_script(transport.target.root, owner))
            checked(result, "rollback")
            states[transport.target.name] = HostState.parse(result.stdout)

        try:
            reporter.phase("lock", ", ".join(group.names))
            group.run("lock", lock)
            current, target = _choose(settings, states, to)
            reporter.phase("rollback", f"{current} -> {target}")
            reverted = None
            if revert:
                reverted = _revert(settings, group, states, current, reporter)
            sha, ref = _origin(states[settings.migrate_on.name], target)
            user, host = deployer()

            def switch(transport) -> None:
                state = states[transport.target.name]
                revision = Revision(
                    action="rollback",
                    release=target,
                    previous=state.current,
                    sha=sha,
                    ref=ref,
                    user=user,
                    host=host,
                    at=utc_now(),
                    status="succeeded",
                )
                script = switch_and_unlock_script(
                    transport.target.root, target=target, revision=revision, owner=owner
                )
                checked(transport.run_script(script), "switch")
                del states[transport.target.name]

            group.run("switch", switch)
        except BaseException:
            _unlock(group, states, owner, reporter)
            raise
        hosts = [
            {
                "host": name,
                "current": target,
                "commands": transport.commands,
                "connections": transport.connections,
            }
            for name, transport in group.transports.items()
        ]
        return RollbackResult(release=target, previous=current, reverted=reverted, hosts=hosts)


def _choose(settings: Settings, states: dict[str, HostState], to: str | None) -> tuple[str, str]:
    """(current, target), or a UsageError before anything changed."""
    currents = {name: state.current for name, state in states.items()}
    if len(set(currents.values())) > 1:
        listing = ", ".join(f"{name}: {current}" for name, current in currents.items())
        raise UsageError(f"the hosts disagree on `current` ({listing}); name one with --to ID")
    current = next(iter(currents.values()))
    existing = set.intersection(*(set(state.releases) for state in states.values()))
    if to:
        missing = [name for name, state in states.items() if to not in state.releases]
        if missing:
            raise ReleaseNotFound(
                f"release {to} is not on {', '.join(missing)}; nothing was changed "
                "(see `invoke releases`)"
            )
        if to == current:
            raise UsageError(f"release {to} is already current; nothing was changed")
        return current or "", to
    if current is None:
        raise UsageError("no release is current on these hosts: nothing to roll back")
    revisions = states[settings.migrate_on.name].revisions
    target = rollback_target(revisions, current, existing)
    if target is None:
        raise UsageError(
            f"no earlier succeeded release than {current} exists on every host; nothing was "
            "changed (see `invoke releases`)"
        )
    return current, target


def _origin(state: HostState, release: str) -> tuple[str | None, str | None]:
    """(sha, ref) of ``release`` from its deploy in the log."""
    for revision in reversed(state.revisions):
        if revision.release == release and revision.action == "deploy":
            return revision.sha, revision.ref
    return None, None


def _revert(
    settings: Settings,
    group: HostGroup,
    states: dict[str, HostState],
    current: str,
    reporter: Reporter,
) -> dict[str, Any]:
    """Revert what ``current`` applied (newest first) before its code goes away."""
    name = settings.migrate_on.name
    reporter.phase("revert", f"migrations applied by {current}, on {name}")
    answer = run_runner(
        group.transports[name],
        settings,
        directory=f"releases/{current}",
        command="revert",
        args=["--release", current, "--lock-timeout", str(int(settings.lock_timeout))],
    )
    data = answer.data or {}
    if answer.exit_code == 2:
        names = ", ".join(migration_label(m) for m in data.get("not_revertible", []))
        raise UsageError(
            f"cannot revert the migrations of {current}: "
            f"{'no revert() in ' + names if names else answer.stderr_tail()}; nothing was changed"
        )
    if answer.exit_code != 0 or answer.data is None:
        failed = data.get("failed")
        detail = (
            f"{migration_label(failed)}: {failed.get('error')}"
            if failed
            else answer.stderr_tail() or "no output"
        )
        done = ", ".join(migration_label(m) for m in data.get("reverted", []))
        raise NeedsPerson(
            f"reverting the migrations of {current} on {name} failed ({detail}); reverted so "
            f"far: {done or 'none'}. The code was NOT switched back. Check `invoke datamig.status`."
        )
    for item in data.get("reverted", []):
        reporter.note(f"  reverted {migration_label(item)} in {item.get('duration_ms')} ms")
    return data


def _unlock(
    group: HostGroup, states: dict[str, HostState], owner: LockOwner, reporter: Reporter
) -> None:
    """Release the locks this rollback still holds (on a failure before the switch)."""
    if not states:
        return
    try:
        group.run(
            "unlock",
            lambda t: checked(
                t.run_script(abort_script(t.target.root, owner=owner, discard=None)), "unlock"
            ),
            hosts=list(states),
        )
    except DeployToolsError as error:
        reporter.warn(f"{error}; release the lock with `invoke lock.release`")
