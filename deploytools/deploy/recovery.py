"""Recovering from a deploy whose process died (SIGKILL, a crashed laptop, a killed CI job).

A dead deployer cannot act, so the guarantee "code and data agree" holds once the next command
has run (DESIGN §3). The next ``invoke deploy`` on the machine the dead owner ran on (or
``invoke lock.release`` anywhere) recovers first:

1. take the dead owner's lock over on every host, stopping a migration runner (and hooks) it
   left;
2. keep the interrupted release if it got through migrate with every migration applied
   (``after_restart`` ones aside: they run once the release serves, and are then reported),
   otherwise go back to the last good release (the last one a succeeded deploy or rollback
   made live), naming the migrations it committed;
3. switch the hosts that are elsewhere, and run ``restart`` (and ``health``) where the code
   that should serve changed and the dead deploy had reached its restart;
4. log the interrupted attempt (a failed one is never a rollback target), remove its leftovers,
   release the lock.
"""

from __future__ import annotations

from typing import Any

from ..config import Settings
from ..exceptions import DeployToolsError, LockHeld
from ..hosts import HostGroup, checked
from ..hosts.transport import Transport
from ..layout import (
    HostState,
    abort_script,
    log_and_unlock_script,
    switch_back_script,
    take_over_script,
)
from ..lock import LockOwner, deployer, utc_now
from ..output import Reporter
from ..revisions import Revision
from ..runner_client import Runner, migration_label
from . import hooks
from .state import HostProgress

#: Lock owners that are not deploys: recovering them only stops what they ran and unlocks.
NOT_DEPLOYS = frozenset({"rollback", "recover", "datamig.apply", "invoke restart"})
#: Phases in which the interrupted release already served, healthy: it stays.
LIVE = {"migrate:after_restart", "finish"}
#: Phases in which it stays if every migration it brought is applied.
MIGRATED = {"migrate:after_switch", "restart"}
#: Phases in which `restart` may already have run with the interrupted release (an undo
#: records "undo:restart" when it began after a restart, "undo" otherwise).
RESTARTED = {"restart", "migrate:after_restart", "finish", "undo:restart"}


def dead_owner(held: LockHeld) -> LockOwner | None:
    """The owner of the locks ``held`` reports, if every one of them is the same deploy and
    it ran on this machine and its process is gone; None otherwise (a person decides)."""
    errors = getattr(held, "errors", None) or {"": held}
    owners = []
    for error in errors.values():
        owner = getattr(error, "owner", None)
        if not isinstance(error, LockHeld) or owner is None or owner.alive() is not False:
            return None
        owners.append(owner)
    if not owners or len({owner.token for owner in owners}) != 1:
        return None
    return owners[0]


def recover(
    settings: Settings, group: HostGroup, dead: LockOwner, reporter: Reporter
) -> dict[str, Any]:
    """Put every host of ``group`` right after ``dead``'s deploy died; returns what was done
    (for ``--json``). Raises LockHeld if another, live deploy holds a lock meanwhile."""
    reporter.warn(f"a deploy that is no longer running holds the lock: {dead.describe()}")
    reporter.phase("recover", f"the interrupted deploy of {dead.release}")
    owner = LockOwner.mine(dead.release, phase="recover")
    states: dict[str, HostState] = group.run(
        "recover",
        lambda t: HostState.parse(
            checked(
                t.run_script(take_over_script(t.target.root, old=dead, owner=owner)), "recover"
            ).stdout
        ),
    )
    if dead.phase in NOT_DEPLOYS:
        # a rollback, `invoke restart` or `datamig.apply` that died: what it ran on the hosts
        # was stopped with the take-over; there is no release of its own to settle
        group.run(
            "recover",
            lambda t: checked(
                t.run_script(log_and_unlock_script(t.target.root, revision=None, owner=owner)),
                "recover",
            ),
        )
        reporter.note(f"  removed the lock of the dead {dead.phase}; check `invoke releases`")
        return {"owner": dead.record(), "release": None, "phase": dead.phase, "kept": None}
    release = dead.release
    switched = [name for name, state in states.items() if state.current == release]
    migrations = _migrations(settings, group, states, release)
    keep = bool(switched) and (
        dead.phase in LIVE
        or (
            dead.phase in MIGRATED
            and migrations is not None
            and all(m.get("state") in APPLIED for m in migrations if not _after_restart(m))
        )
    )
    # what the interrupted release committed stays applied when its code goes: say which
    stayed = [] if keep else _applied_by(migrations or [], release)
    targets = {
        name: release if keep else _last_good(state, release)
        for name, state in states.items()
        if name in {t.name for t in settings.targets}
    }
    moved = [name for name, target in targets.items() if states[name].current != target]
    if moved:
        reporter.phase(
            "recover",
            "switching "
            + ", ".join(f"{name} to {targets[name] or 'no release'}" for name in moved),
        )
        group.run(
            "recover",
            lambda t: checked(
                t.run_script(switch_back_script(t.target.root, target=targets[t.target.name])),
                "recover",
            ),
            hosts=moved,
        )
    if keep:  # the release stays: it must serve everywhere
        restart = moved if dead.phase in LIVE else list(targets)
    else:  # back to the last good release: restart it where the dead deploy restarted
        # (everywhere: an undo may have switched a host back without restarting it yet)
        restart = list(targets) if dead.phase in RESTARTED else []
    if restart:
        reporter.phase("restart", ", ".join(restart))
        group.run(
            "restart",
            lambda t: hooks.restart(HostProgress(t), settings, None, reporter),
            hosts=restart,
        )
    user, host = deployer()
    note = (
        f"interrupted: the deploying process ({dead.user}@{dead.host}, pid {dead.pid}) died "
        f"during {dead.phase}; recovered by {user}@{host}"
        + ("; every migration had been applied, the release was kept" if keep else "")
    )

    def log(transport: Transport) -> None:
        state = states[transport.target.name]
        revision = None
        if transport.target.name in targets and (
            release in state.releases or state.current == release
        ):
            revision = Revision(
                action="deploy",
                release=release,
                previous=_last_good(state, release),
                sha=None,
                ref=None,
                user=dead.user,
                host=dead.host,
                at=utc_now(),
                status="succeeded" if keep else "failed",
                error=note,
                stayed_applied=stayed or None,
            )
        root = transport.target.root
        if not keep and release not in switched and release in state.releases:
            checked(
                transport.run_script(abort_script(root, owner=None, discard=release)), "recover"
            )
        checked(
            transport.run_script(log_and_unlock_script(root, revision=revision, owner=owner)),
            "recover",
        )

    group.run("recover", log)
    reporter.note(f"  recovered: {note}")
    late = [
        migration_label(m)
        for m in migrations or []
        if keep and _after_restart(m) and m.get("state") not in APPLIED
    ]
    if late:  # they run once the new code serves; the deploy that brought them died first
        reporter.warn(
            f"after_restart migrations of {release} were not applied: {', '.join(late)}; "
            "run `invoke datamig.apply`"
        )
    if stayed:  # a warning: shown with --json too
        reporter.warn(
            f"migrations of {release} stayed applied (they committed before the deploy died; "
            f"the previous release must work with them): {', '.join(stayed)}"
        )
    return {
        "owner": dead.record(),
        "release": release,
        "phase": dead.phase,
        "kept": keep,
        "hosts": targets,
        "stayed_applied": stayed,
    }


def _last_good(state: HostState, interrupted: str) -> str | None:
    """The release the last succeeded deploy or rollback made live (not the interrupted one)."""
    for revision in reversed(state.revisions):
        if revision.status == "succeeded" and revision.release and revision.release != interrupted:
            return revision.release if revision.release in state.releases else None
    return state.current if state.current != interrupted else None


#: Ledger states of a migration that committed.
APPLIED = ("applied", "changed", "missing")


def _migrations(
    settings: Settings, group: HostGroup, states: dict[str, HostState], release: str
) -> list[dict[str, Any]] | None:
    """The runner's ``status`` of the migration host, read in the interrupted release (or in
    ``current`` when that release never got there); None when it cannot be read."""
    transport = group.transports.get(settings.migrate_on.name)
    state = states.get(settings.migrate_on.name)
    if transport is None or state is None:
        return None
    directory = f"releases/{release}" if release in state.releases else "current"
    if directory == "current" and state.current is None:
        return None
    try:
        answer = Runner(transport, settings).status(directory)
    except DeployToolsError:
        return None
    if answer.data is None:
        return None
    return list(answer.data.get("migrations", []))


def _after_restart(migration: dict[str, Any]) -> bool:
    """Run once the new code serves: a release is live without them (DESIGN §4, phases)."""
    return migration.get("phase") == "after_restart"


def _applied_by(migrations: list[dict[str, Any]], release: str) -> list[str]:
    """Labels of the migrations ``release`` applied (the ledger records who applied each)."""
    return [
        migration_label(m)
        for m in migrations
        if m.get("release") == release and m.get("state") in APPLIED
    ]
