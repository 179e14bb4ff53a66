"""The commands around deploys: ``setup``, ``releases``, ``restart``, ``lock.status`` and
``lock.release``.

Each is one remote command per host, in parallel. ``lock.release`` removes the lock on every
host without asking (a person decided), after recovering from the deploy that held it exactly
as the next deploy would (``deploy.recovery``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Settings
from .deploy import hooks, recovery
from .deploy.state import HostProgress
from .exceptions import DeployToolsError, HostError
from .hosts import HostGroup, checked
from .hosts.transport import Transport
from .layout import (
    HostState,
    abort_script,
    lock_release_script,
    lock_state_script,
    setup_script,
    state_script,
    stop_runner_script,
)
from .lock import LockOwner
from .output import Reporter
from .revisions import failed_releases, rollback_target


def setup(settings: Settings) -> dict[str, str]:
    """Create the host layout (parents of the root included); returns each host's absolute root."""
    with HostGroup(settings) as group:
        states = group.run(
            "setup",
            lambda t: HostState.parse(
                checked(
                    t.run_script(setup_script(t.target.root, settings.shared_dirs)), "setup"
                ).stdout
            ),
        )
    return {name: state.root for name, state in states.items()}


def read_state(transport: Transport) -> HostState:
    """One host's layout, releases, revisions and lock (read-only, one command)."""
    return HostState.parse(
        checked(transport.run_script(state_script(transport.target.root)), "read").stdout
    )


def read_states(settings: Settings) -> dict[str, HostState]:
    """Every host's state, read in parallel."""
    with HostGroup(settings) as group:
        return group.run("read", read_state)


@dataclass(frozen=True)
class ReleaseInfo:
    id: str
    current: bool
    failed: bool
    rollback_target: bool


def releases(settings: Settings) -> dict[str, list[ReleaseInfo]]:
    """Releases per host, oldest first, marking current, failed and the rollback target."""
    states = read_states(settings)
    existing = set.intersection(*(set(state.releases) for state in states.values()))
    listing = {}
    for name, state in states.items():
        failed = failed_releases(state.revisions)
        target = rollback_target(state.revisions, state.current, existing)
        listing[name] = [
            ReleaseInfo(
                id=release,
                current=release == state.current,
                failed=release in failed,
                rollback_target=release == target,
            )
            for release in state.releases
        ]
    return listing


def lock_record(state: HostState) -> dict[str, Any] | None:
    """The owner as a dict with ``alive`` (``alive``/``dead``/``unknown``) and the pid of a
    migration runner still working under it; ``{}`` for a lock without owner.json, None when
    unlocked."""
    if not state.locked:
        return None
    if state.lock is None:
        return {"runner_pid": state.runner_pid} if state.runner_pid else {}
    return {**state.lock.record(), "alive": state.lock.liveness(), "runner_pid": state.runner_pid}


def lock_status(settings: Settings) -> dict[str, dict[str, Any] | None]:
    """The lock owner per host (None when unlocked; ``{}`` for a lock without owner.json)."""
    states = read_states(settings)
    return {name: lock_record(state) for name, state in states.items()}


def lock_release(settings: Settings, reporter: Reporter) -> dict[str, dict[str, Any] | None]:
    """Recover from the deploy holding the locks (as the next deploy would), then remove the
    deploy lock on every host; returns what was held per host."""
    with HostGroup(settings) as group:
        states = group.run("lock.release", read_state)
        held = {name: lock_record(state) for name, state in states.items()}
        owners = {s.lock.token: s.lock for s in states.values() if s.lock and s.lock.token}
        if len(owners) == 1:
            (owner,) = owners.values()
            # one deploy, one record per host: the migration host's shows the furthest phase
            # (check and migrate run there alone), which is what recovery decides from
            first = states.get(settings.migrate_on.name)
            if first is not None and first.lock is not None and first.lock.token == owner.token:
                owner = first.lock
            recovery.recover(settings, group, owner, reporter)
        group.run(
            "lock.release",
            lambda t: checked(t.run_script(stop_runner_script(t.target.root, 10)), "lock.release"),
            hosts=[name for name, state in states.items() if state.runner_pid],
        )
        group.run(
            "lock.release",
            lambda t: checked(t.run_script(lock_release_script(t.target.root)), "lock.release"),
        )
    return held


def restart(settings: Settings, reporter: Reporter) -> dict[str, Any]:
    """``invoke restart``: ``restart`` then ``health`` on every host, batch after batch, under
    the deploy lock. Raises HostError naming the hosts where it failed."""
    owner = LockOwner.mine("restart", phase="invoke restart")
    targets = list(settings.targets)
    if not any(t.restart or t.health for t in targets):
        reporter.note("nothing to do: deploy.restart and deploy.health are empty")
        return {"hosts": [t.name for t in targets], "restarted": []}
    with HostGroup(settings) as group:
        locked: list[str] = []

        def lock(transport: Transport) -> None:
            checked(transport.run_script(lock_state_script(transport.target.root, owner)), "lock")
            locked.append(transport.target.name)

        restarted: list[str] = []
        try:
            group.run("lock", lock)
            for batch in settings.restart_batches(targets):
                reporter.phase("restart", ", ".join(t.name for t in batch))
                group.run(
                    "restart",
                    lambda t: hooks.restart(HostProgress(t), settings, None, reporter),
                    hosts=[t.name for t in batch],
                )
                restarted += [t.name for t in batch]
        except DeployToolsError as error:
            if restarted or getattr(error, "hosts", None):
                raise HostError(
                    f"{error}\nRestarted so far: {', '.join(restarted) or 'none'}."
                ) from None
            raise
        finally:
            if locked:
                group.run(
                    "unlock",
                    lambda t: checked(
                        t.run_script(abort_script(t.target.root, owner=owner, discard=None)),
                        "unlock",
                    ),
                    hosts=locked,
                )
    return {"hosts": [t.name for t in targets], "restarted": restarted}
