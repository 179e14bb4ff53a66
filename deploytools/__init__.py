"""deploytools: release deploys over SSH with run-once data migrations as the post-deploy step.

``from deploytools import fleet`` gives custom tasks the configured hosts as a Fabric group
(see ``deploytools.hosts.fleet``). It is imported on first use, so that ``import deploytools``
(and the host-side runner, ``python -m deploytools.datamig``) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hosts.fleet import fleet

__all__ = ["fleet"]


def __getattr__(name: str) -> Any:
    if name == "fleet":
        from .hosts.fleet import fleet

        return fleet
    raise AttributeError(f"module 'deploytools' has no attribute {name!r}")
