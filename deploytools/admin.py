"""The commands around deploys: ``setup``, ``releases``, ``lock.status`` and ``lock.release``.

Each is one remote command per host, in parallel. Only ``setup`` and ``lock.release`` change
anything; ``lock.release`` removes the lock on every host without asking (a person decided).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Settings
from .hosts import HostGroup, checked
from .hosts.transport import Transport
from .layout import HostState, lock_release_script, setup_script, state_script
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


def _lock_record(state: HostState) -> dict[str, Any] | None:
    """The owner as a dict; ``{}`` for a lock without owner.json, None when unlocked."""
    if not state.locked:
        return None
    return vars(state.lock) if state.lock else {}


def lock_status(settings: Settings) -> dict[str, dict[str, Any] | None]:
    """The lock owner per host (None when unlocked; ``{}`` for a lock without owner.json)."""
    states = read_states(settings)
    return {name: _lock_record(state) for name, state in states.items()}


def lock_release(settings: Settings) -> dict[str, dict[str, Any] | None]:
    """Remove the deploy lock on every host; returns what was removed per host."""
    with HostGroup(settings) as group:
        states = group.run(
            "lock.release",
            lambda t: HostState.parse(
                checked(t.run_script(lock_release_script(t.target.root)), "lock.release").stdout
            ),
        )
    return {name: _lock_record(state) for name, state in states.items()}
