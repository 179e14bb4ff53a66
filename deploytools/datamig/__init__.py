"""Run-once data migrations, applied on a release host as the post-deploy step.

``python -m deploytools.datamig status|check|apply|revert`` is the command line (``__main__``);
the functions behind it live in :mod:`deploytools.datamig.runner`. Importing this package (or
:mod:`deploytools.datamig.discovery`) loads only the standard library, so the deploy side can
check a build's migration file names, and read :data:`PROTOCOL`, on a machine without
SQLAlchemy or redis-py; the runner's names below are imported on first use.
"""

from __future__ import annotations

from typing import Any

from deploytools.datamig.discovery import (
    DEFAULT_PHASE,
    PHASES,
    MigrationFile,
    check_migration_names,
    discover,
)

#: The version of the runner's JSON answers. Every ``--json`` answer carries it as
#: ``"protocol"``; the deploy client speaks its own protocol and the one before.
PROTOCOL = 2

__all__ = [
    "DEFAULT_PHASE",
    "PHASES",
    "PROTOCOL",
    "MigrationFile",
    "Settings",
    "apply",
    "check",
    "check_migration_names",
    "discover",
    "revert",
    "status",
]

_RUNNER_NAMES = {"Settings", "apply", "check", "revert", "status"}


def __getattr__(name: str) -> Any:
    if name in _RUNNER_NAMES:
        from deploytools.datamig import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
