"""``deploytools.fleet``: the configured hosts as a Fabric ``ThreadingGroup``, for custom tasks.

A project's own tasks (tail the logs, restart a worker, run a one-off command) reach the same
hosts the deploy does, with the same connections: host keys checked against
``deploy.known_hosts`` (or accepted and recorded when ``deploy.accept_new_host_keys`` is set),
``deploy.identity_file``, ``deploy.connect_timeout``, keepalives and TCP_NODELAY. It is plain
Fabric from there: ``run``/``sudo``/``put``/``get`` on every host in parallel, a
``GroupResult`` back, a ``GroupException`` when some host failed.

The ``local`` target has no SSH connection, so it is refused: use ``c.run`` for it.
"""

from __future__ import annotations

from typing import Any

from fabric import ThreadingGroup

from ..config import LOCAL, Settings, load_settings
from ..exceptions import ConfigError
from .ssh import make_connection


def fleet(c: Any, role: str | None = None, *, hosts: str | None = None) -> ThreadingGroup:
    """The hosts of ``deploy.hosts`` (``hosts``: a ``--hosts`` style override, "H1,H2"),
    those with ``role`` among their roles when given, as a Fabric ``ThreadingGroup``.
    Connections open on first use; close the group (``with fleet(c) as group:``) when done."""
    return fleet_group(load_settings(c.config, hosts), role)


def fleet_group(settings: Settings, role: str | None = None) -> ThreadingGroup:
    """``fleet`` for settings already loaded."""
    targets = list(settings.targets)
    if role is not None:
        known = sorted({name for t in targets for name in getattr(t, "roles", ())})
        if role not in known:
            have = ", ".join(known) if known else "none (give hosts `roles` in deploy.hosts)"
            raise ConfigError(f"no host has the role {role!r}; the roles are: {have}")
        targets = [t for t in targets if role in getattr(t, "roles", ())]
    local = [t.name for t in targets if t.is_local]
    if local:
        raise ConfigError(
            f"deploytools.fleet reaches hosts over SSH, and {LOCAL!r} is a directory on this "
            "machine: use c.run for it, or leave it out with a role or hosts="
        )
    return ThreadingGroup.from_connections(make_connection(t, settings) for t in targets)
