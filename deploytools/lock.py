"""The deploy lock: ``<root>/deploy.lock/`` made with an atomic ``mkdir``, and who holds it.

A lock never expires by itself: only the deploy that took it, or a person with
``invoke lock.release``, removes it. This module describes the owner; the remote side of
taking and releasing lives in ``layout``.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime


def utc_now() -> str:
    """ISO-8601 UTC with a trailing Z, second precision (the format of owner.json and the logs)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def deployer() -> tuple[str, str]:
    """(user, host) of whoever runs this deploy, as recorded in locks and revisions."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return user, socket.gethostname()


@dataclass(frozen=True)
class LockOwner:
    """The content of ``deploy.lock/owner.json`` (DESIGN §2)."""

    user: str
    host: str
    pid: int
    release: str
    started_at: str

    @classmethod
    def mine(cls, release: str) -> LockOwner:
        user, host = deployer()
        return cls(user=user, host=host, pid=os.getpid(), release=release, started_at=utc_now())

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LockOwner | None:
        """None when owner.json is missing or unreadable (a lock taken by a deploy that died
        between mkdir and writing it)."""
        try:
            data = json.loads(text)
            return cls(
                user=str(data["user"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                release=str(data["release"]),
                started_at=str(data["started_at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def age_seconds(self, now: datetime | None = None) -> float | None:
        try:
            started = datetime.strptime(self.started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return None
        return ((now or datetime.now(UTC)) - started).total_seconds()

    def describe(self) -> str:
        """``alice@laptop (pid 4242) for release X since T (3m 12s ago)``."""
        age = self.age_seconds()
        ago = f" ({format_age(age)} ago)" if age is not None else ""
        return (
            f"{self.user}@{self.host} (pid {self.pid}) for release {self.release} "
            f"since {self.started_at}{ago}"
        )


def format_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
