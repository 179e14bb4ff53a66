"""``invoke rollback``: every host back to the rollback target (or ``--to ID``), then
``restart`` and ``health`` so the old code serves.

The target comes from ``revisions.jsonl`` (DESIGN §2), never from directory times, and must
exist on every host; otherwise nothing changes (exit 2). With migration-aware rollback the
``revert()`` of every migration the rolled-back release applied runs first, newest first, on
the migration host; a migration without ``revert`` stops the rollback before any change.

A switch that fails on some host puts the hosts that did switch back where they were, so the
fleet never stays split (exit 1); if that fails too, exit 4 names the hosts. Once every host
is switched, a failing ``restart``/``health`` is exit 4 naming the hosts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .deploy import hooks
from .deploy.state import HostProgress
from .exceptions import (
    DeployToolsError,
    HostError,
    Interrupted,
    NeedsPerson,
    ReleaseNotFound,
    UsageError,
)
from .hosts import HostGroup, checked
from .interrupts import interruptible
from .layout import (
    HostState,
    abort_script,
    lock_state_script,
    log_and_unlock_script,
    switch_back_script,
)
from .lock import LockOwner, deployer, utc_now
from .output import Reporter
from .revisions import Revision, rollback_target
from .runner_client import Runner, migration_label


@dataclass
class RollbackResult:
    release: str
    previous: str | None
    reverted: dict[str, Any] | None = None
    hosts: list[dict[str, Any]] = field(default_factory=list)
    status: str = "succeeded"
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "release": self.release,
            "previous": self.previous,
            "error": self.error,
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
    Interrupted (before any switch), or NeedsPerson (a revert, a switch back, a restart or
    a health check failed; the message names the hosts)."""
    reporter = reporter or Reporter()
    revert = settings.revert_on_rollback if revert_migrations is None else revert_migrations
    owner = LockOwner.mine(to or "rollback", phase="rollback")
    with interruptible() as interrupts, HostGroup(settings) as group:
        states: dict[str, HostState] = {}
        locked: set[str] = set()

        def lock(transport) -> None:
            result = transport.run_script(lock_state_script(transport.target.root, owner))
            if result.ok or result.connection_lost:
                locked.add(transport.target.name)
            checked(result, "rollback")
            states[transport.target.name] = HostState.parse(result.stdout)

        try:
            reporter.phase("lock", ", ".join(group.names))
            first = settings.migrate_on.name if settings.migrate_on.name in group.names else None
            if first:
                group.run("lock", lock, hosts=[first])
            group.run("lock", lock, hosts=[n for n in group.names if n != first])
            current, target = _choose(settings, states, to)
            reporter.phase("rollback", f"{current} -> {target}")
            reverted = _revert(settings, group, current, reporter) if revert else None
        except BaseException as failure:
            with interrupts.shielded():
                _unlock(group, locked, owner, reporter)
            if isinstance(failure, KeyboardInterrupt):
                raise Interrupted("rollback interrupted before any host was switched") from None
            raise
        with interrupts.shielded():  # from here on, finishing is the way out
            result = RollbackResult(release=target, previous=current, reverted=reverted)
            _switch_all(settings, group, states, owner, target, current, reporter)
            problems = _restart(settings, group, reporter)
            result.hosts = [
                {
                    "host": name,
                    "current": target,
                    "commands": transport.commands,
                    "connections": transport.connections,
                }
                for name, transport in group.transports.items()
            ]
            if problems:
                details = "; ".join(f"{host}: {why}" for host, why in problems.items())
                error = NeedsPerson(
                    f"every host is on {target}, but restart or health failed on "
                    f"{', '.join(problems)} ({details}): the previous code may not be serving "
                    "there. Fix it, then run `invoke restart`."
                )
                result.status, result.error = "failed", str(error)
                error.result = result  # type: ignore[attr-defined]
                raise error
        return result


def _switch_all(
    settings: Settings,
    group: HostGroup,
    states: dict[str, HostState],
    owner: LockOwner,
    target: str,
    current: str,
    reporter: Reporter,
) -> None:
    """Switch every host to ``target``, log and unlock; a host that fails makes the others go
    back to ``current`` (never a split fleet), or exit 4 naming the hosts."""
    sha, ref = _origin(states[next(iter(states))], target)
    user, host = deployer()
    switched: set[str] = set()

    def switch(transport) -> None:
        result = transport.run_script(switch_back_script(transport.target.root, target=target))
        if result.ok or result.connection_lost:
            switched.add(transport.target.name)
        checked(result, "switch")

    try:
        group.run("switch", switch)
    except DeployToolsError as failure:
        reporter.phase("rollback", f"putting the hosts back on {current}")
        back: dict[str, str] = {}

        def put_back(transport) -> None:
            try:
                checked(
                    transport.run_script(switch_back_script(transport.target.root, target=current)),
                    "switch back",
                )
            except DeployToolsError:
                transport.reconnect()
                checked(
                    transport.run_script(switch_back_script(transport.target.root, target=current)),
                    "switch back",
                )

        try:
            group.run("switch back", put_back, hosts=sorted(switched))
        except DeployToolsError as error:
            back = {h: str(e) for h, e in getattr(error, "errors", {}).items()}
        _unlock(group, set(states) - set(back), owner, reporter)
        if back:
            raise NeedsPerson(
                f"the rollback to {target} failed ({failure}) and putting "
                f"{', '.join(back)} back on {current} failed too: the hosts are split. Check "
                "`invoke releases` and `invoke lock.status`."
            ) from None
        if failure.exit_code == NeedsPerson.exit_code:
            raise
        raise HostError(
            f"the rollback to {target} failed and every host is back on {current}: {failure}"
        ) from failure

    def log(transport) -> None:
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
        checked(
            transport.run_script(
                log_and_unlock_script(transport.target.root, revision=revision, owner=owner)
            ),
            "log",
        )

    try:
        group.run("log", log)
    except DeployToolsError as error:
        reporter.warn(
            f"{error}; every host is on {target}. Release a leftover lock with "
            "`invoke lock.release`"
        )


def _restart(settings: Settings, group: HostGroup, reporter: Reporter) -> dict[str, str]:
    """``restart`` + ``health`` in batches, as a deploy does; the hosts where it failed."""
    targets = [t for t in settings.targets if t.name in group.transports]
    if not any(t.restart or t.health for t in targets):
        return {}
    problems: dict[str, str] = {}
    for batch in settings.restart_batches(targets):
        reporter.phase("restart", ", ".join(t.name for t in batch))
        try:
            group.run(
                "restart",
                lambda t: hooks.restart(HostProgress(t), settings, None, reporter),
                hosts=[t.name for t in batch],
            )
        except DeployToolsError as error:
            problems |= {h: str(e) for h, e in getattr(error, "errors", {}).items()}
            break  # the next batch would restart into the same failure
    return problems


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
    revisions = states.get(settings.migrate_on.name, next(iter(states.values()))).revisions
    target = rollback_target(revisions, current, existing)
    if target is None:
        raise UsageError(
            f"no earlier good release than {current} exists on every host; nothing was "
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
    settings: Settings, group: HostGroup, current: str, reporter: Reporter
) -> dict[str, Any]:
    """Revert what ``current`` applied (newest first) before its code goes away."""
    name = settings.migrate_on.name
    reporter.phase("revert", f"migrations applied by {current}, on {name}")
    answer = Runner(group.transports[name], settings, on_line=reporter.stream).revert(
        f"releases/{current}", release=current, skip_irreversible=False
    )
    data = answer.data or {}
    if answer.exit_code == 2:
        names = ", ".join(migration_label(m) for m in data.get("not_revertible", []))
        raise UsageError(
            f"cannot revert the migrations of {current}: "
            f"{'no revert() in ' + names if names else answer.message}; nothing was changed"
        )
    if not answer.ok:
        failed = data.get("failed")
        detail = f"{migration_label(failed)}: {failed.get('error')}" if failed else answer.message
        done = ", ".join(migration_label(m) for m in data.get("reverted", []))
        raise NeedsPerson(
            f"reverting the migrations of {current} on {name} failed ({detail}); reverted so "
            f"far: {done or 'none'}. The code was NOT switched back. Check `invoke datamig.status`."
        )
    for item in data.get("reverted", []):
        reporter.note(f"  reverted {migration_label(item)} in {item.get('duration_ms')} ms")
    return data


def _unlock(group: HostGroup, hosts: set[str], owner: LockOwner, reporter: Reporter) -> None:
    """Release the locks this rollback holds on ``hosts``."""
    if not hosts:
        return
    try:
        group.run(
            "unlock",
            lambda t: checked(
                t.run_script(abort_script(t.target.root, owner=owner, discard=None)), "unlock"
            ),
            hosts=sorted(hosts),
        )
    except DeployToolsError as error:
        reporter.warn(f"{error}; release the lock with `invoke lock.release`")
