"""Every error deploytools raises, and the exit code each one maps to.

The library never exits; the command line (``deploytools.cli.exit_code_for``) maps
these to the exit codes of DESIGN §6 in one place::

    DeployToolsError                 exit 1  something failed; no host is left on a new release
    ├── UsageError                   exit 2  bad config, arguments, release id or migration files,
    │   ├── ConfigError                      found before any host changed
    │   ├── MigrationFileError
    │   └── ReleaseNotFound
    ├── LockHeld                     exit 3  another deploy holds the deploy lock
    ├── HostError                    exit 1  a phase failed on one or more hosts
    │   └── TransportError                   a host is unreachable, refused our key, or showed
    │                                        an unknown or changed host key
    ├── MigrationFailed              exit 1  a data migration raised (or its runner failed)
    ├── Interrupted                  exit 1  Ctrl-C; hosts were put back as they were
    └── NeedsPerson                  exit 4  switching back failed, a revert failed, or the
                                             migration state on a host is unknown

Messages carry the evidence (host, phase, release, migration) and say what to do next.
"""

from __future__ import annotations


class DeployToolsError(Exception):
    """Base of every deploytools error; ``exit_code`` is what the command line exits with."""

    exit_code = 1


class UsageError(DeployToolsError):
    """Bad configuration, arguments, release id or migration files; nothing has changed."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration key or task flag is invalid."""


class MigrationFileError(UsageError):
    """A migration file is malformed, duplicated, does not import or lacks ``run``."""


class ReleaseNotFound(UsageError):
    """A named release does not exist on every host (or in the ledger)."""


class LockHeld(DeployToolsError):
    """Another deploy (or migration runner) holds the lock; nothing was changed."""

    exit_code = 3


class HostError(DeployToolsError):
    """A phase failed on one or more hosts; the message names each host and the phase."""


class TransportError(HostError):
    """A host could not be reached, refused our key, or showed an unknown or changed host key."""


class MigrationFailed(DeployToolsError):
    """A data migration raised, or its runner failed; the deploy was rolled back."""


class Interrupted(DeployToolsError):
    """The user pressed Ctrl-C; every host was put back as it was before."""


class NeedsPerson(DeployToolsError):
    """A person must look: a host could not be switched back, a revert failed, or the
    migration state on a host is unknown. The message names the hosts and what to check."""

    exit_code = 4
