"""The deploy lock: ``<root>/deploy.lock/`` made with an atomic ``mkdir``, and who holds it.

A lock never expires by itself: only the deploy that took it, or a person with
``invoke lock.release``, removes it. Kamal-style, the lock carries a record of its owner
(``owner.json``: who, where, which process, which release, which phase) so that a refused
deploy and ``lock.status`` can say whether the owner is still alive, and the next deploy on
the same machine can recover from an owner that was killed. Ownership itself is a random
token in ``deploy.lock/token``: ``owner.json`` is rewritten at every phase, the token never.

This module describes the owner; the remote side of taking and releasing lives in ``layout``.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import subprocess
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path


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


def machine_id() -> str:
    """This machine's identity (``/etc/machine-id``): a pid only means something on the machine
    that recorded it, and host names repeat (CI runners, containers)."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return "host:" + socket.gethostname()


def process_started_at(pid: int) -> str | None:
    """When process ``pid`` started, as an opaque string (None if there is no such process).
    With the pid it names one process for good: pids are reused, start times are not."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{fields[19]}"  # field 22 of stat: start time in clock ticks after boot
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # Linux, and no such process
    except (OSError, IndexError):
        return None
    completed = subprocess.run(  # not Linux: ps knows the start time
        ["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return completed.stdout.strip() or None


@dataclass(frozen=True)
class LockOwner:
    """The content of ``deploy.lock/owner.json`` (DESIGN §2), plus the token proving
    ownership (kept in ``deploy.lock/token``, never shown)."""

    user: str
    host: str
    pid: int
    release: str
    started_at: str
    phase: str = "preflight"
    machine_id: str = ""
    pid_started_at: str = ""
    token: str = ""

    @classmethod
    def mine(cls, release: str, phase: str = "preflight") -> LockOwner:
        user, host = deployer()
        pid = os.getpid()
        return cls(
            user=user,
            host=host,
            pid=pid,
            release=release,
            started_at=utc_now(),
            phase=phase,
            machine_id=machine_id(),
            pid_started_at=process_started_at(pid) or "",
            token=secrets.token_hex(16),
        )

    def at(self, phase: str) -> LockOwner:
        """The same owner, now in ``phase``."""
        return replace(self, phase=phase)

    def to_json(self) -> str:
        record = asdict(self)
        del record["token"]
        return json.dumps(record, separators=(",", ":"))

    def record(self) -> dict:
        """owner.json as a dict (for ``--json``)."""
        return json.loads(self.to_json())

    @classmethod
    def from_json(cls, text: str, token: str = "") -> LockOwner | None:
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
                phase=str(data.get("phase") or "unknown"),
                machine_id=str(data.get("machine_id") or ""),
                pid_started_at=str(data.get("pid_started_at") or ""),
                token=token,
            )
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def on_this_machine(self) -> bool:
        return bool(self.machine_id) and self.machine_id == machine_id()

    def alive(self) -> bool | None:
        """Whether the owning process still runs: known only on the machine it ran on
        (None elsewhere). A reused pid with another start time is not the owner."""
        if not self.on_this_machine:
            return None
        started = process_started_at(self.pid)
        if started is None:
            return False
        return not self.pid_started_at or started == self.pid_started_at

    def liveness(self) -> str:
        """``alive``, ``dead`` or ``unknown`` (another machine), for people and ``--json``."""
        alive = self.alive()
        return "unknown" if alive is None else ("alive" if alive else "dead")

    def age_seconds(self, now: datetime | None = None) -> float | None:
        try:
            started = datetime.strptime(self.started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return None
        return ((now or datetime.now(UTC)) - started).total_seconds()

    def describe(self) -> str:
        """``alice@laptop (pid 4242, dead) for release X, phase migrate, since T (3m 12s ago)``."""
        age = self.age_seconds()
        ago = f" ({format_age(age)} ago)" if age is not None else ""
        liveness = {"alive": "running", "dead": "no longer running"}.get(
            self.liveness(), "on another machine: alive or not unknown"
        )
        return (
            f"{self.user}@{self.host} (pid {self.pid}, {liveness}) for release {self.release}, "
            f"phase {self.phase}, since {self.started_at}{ago}"
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
