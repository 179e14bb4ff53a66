"""What the runner's commands return, and their JSON form (the runner's protocol).

Every answer printed with ``--json`` is one of these ``to_json()`` objects plus ``"protocol"``
(added by the command line). ``status``, ``check``, ``apply`` and ``revert`` name the ledger
(``ledger``: the PostgreSQL URL without its password, or the SQLite path), its identity
(``ledger_id``: null while the ledger does not exist) and non-fatal findings (``warnings``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from deploytools.datamig.discovery import MigrationFile
from deploytools.datamig.ledger import AppliedRow

APPLIED, PENDING, FAILED, CHANGED, MISSING, RUNNING, INTERRUPTED = (
    "applied",
    "pending",
    "failed",
    "changed",
    "missing",
    "running",
    "interrupted",
)
#: States ``apply`` runs again.
TO_APPLY = frozenset({PENDING, FAILED, INTERRUPTED})


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Progress:
    """How far a batched migration got: rows done, its last key, the time still needed."""

    rows_done: int
    last_key: Any  # the key values, as a JSON list
    eta_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "rows_done": self.rows_done,
            "last_key": self.last_key,
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Progress | None:
        if not data:
            return None
        return cls(int(data.get("rows_done") or 0), data.get("last_key"), data.get("eta_s"))


@dataclass
class MigrationStatus:
    """One line of ``status``. ``in_release`` is false for a migration whose file is not in
    this release (``missing``, or a failed attempt of another release after a rollback)."""

    version: str
    name: str
    state: str
    out_of_order: bool = False
    applied_at: datetime | None = None
    duration_ms: int | None = None
    release: str | None = None
    error: str | None = None
    progress: Progress | None = None
    phase: str | None = None
    in_release: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "state": self.state,
            "out_of_order": self.out_of_order,
            "applied_at": iso(self.applied_at),
            "duration_ms": self.duration_ms,
            "release": self.release,
            "error": self.error,
            "progress": self.progress.to_json() if self.progress else None,
            "phase": self.phase,
            "in_release": self.in_release,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> MigrationStatus:
        applied_at = entry.get("applied_at")
        return cls(
            version=entry["version"],
            name=entry["name"],
            state=entry["state"],
            out_of_order=bool(entry.get("out_of_order")),
            applied_at=datetime.fromisoformat(applied_at) if applied_at else None,
            duration_ms=entry.get("duration_ms"),
            release=entry.get("release"),
            error=entry.get("error"),
            progress=Progress.from_json(entry.get("progress")),
            phase=entry.get("phase"),
            in_release=entry.get("in_release", True),
        )


@dataclass
class StatusReport:
    """Every migration known to the files or the ledger, in version order."""

    migrations: list[MigrationStatus]
    ledger: str = ""  # where the ledger is, password-free, for people
    ledger_id: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def pending(self) -> int:
        """Migrations that ``apply`` would run (``failed`` and ``interrupted`` ones too)."""
        return sum(m.state in TO_APPLY and m.in_release for m in self.migrations)

    def to_json(self) -> dict[str, Any]:
        return {
            "migrations": [m.to_json() for m in self.migrations],
            "pending": self.pending,
            "ledger": self.ledger,
            "ledger_id": self.ledger_id,
            "warnings": self.warnings,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], ledger: str = "") -> StatusReport:
        """A report read back from ``status --json`` (e.g. a remote host's answer);
        ``ledger`` replaces the answer's own ledger name when given."""
        return cls(
            [MigrationStatus.from_json(entry) for entry in data.get("migrations", [])],
            ledger=ledger or data.get("ledger") or "",
            ledger_id=data.get("ledger_id"),
            warnings=list(data.get("warnings") or []),
        )


def _ref(migration: MigrationFile | AppliedRow) -> dict[str, str]:
    return {"version": migration.version, "name": migration.name}


def _ref_phase(migration: MigrationFile) -> dict[str, Any]:
    return {**_ref(migration), "phase": migration.phase}


@dataclass
class CheckReport:
    """What ``check`` found: the pending migrations (all importable), the ledger, warnings."""

    pending: list[MigrationFile]
    applied: int
    ledger: str
    ledger_id: str | None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger,
            "ledger_id": self.ledger_id,
            "pending": [_ref_phase(m) for m in self.pending],
            "applied": self.applied,
            "warnings": self.warnings,
        }


@dataclass
class Done:
    """A migration applied or reverted in this run."""

    version: str
    name: str
    duration_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "duration_ms": self.duration_ms}


@dataclass
class Failure:
    """The migration that failed: ``error`` is ``Type: message`` (or what happened, e.g. "the
    migration exited the process (sys.exit(3))"); ``detail`` adds the traceback tail, as
    recorded in the ledger. ``interrupted`` names the signal that stopped it, if one did."""

    version: str
    name: str
    error: str
    detail: str = ""
    interrupted: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "error": self.error}


@dataclass
class _RunResult:
    """What ``apply`` and ``revert`` share: the ledger, warnings, the failure and why."""

    failed: Failure | None = None
    ledger: str = ""
    ledger_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    #: the signal that ended the run between two migrations, if one did
    interrupted: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed is None and self.interrupted is None

    def error_message(self, verb: str) -> str | None:
        """Why the command failed (the JSON answer's ``error``), or None."""
        if self.failed is not None:
            label = f"{self.failed.version}_{self.failed.name}"
            if self.failed.interrupted:
                return (
                    f"interrupted by {self.failed.interrupted} while {verb} {label}: it was "
                    "rolled back and recorded as failed"
                )
            return f"migration {label} failed: {self.failed.error}"
        if self.interrupted is not None:
            return f"interrupted by {self.interrupted} between two migrations"
        return None

    def _common(self) -> dict[str, Any]:
        return {"ledger": self.ledger, "ledger_id": self.ledger_id, "warnings": self.warnings}


@dataclass
class ApplyResult(_RunResult):
    """What ``apply`` did; with ``dry_run``, ``would_apply`` lists what it would have run.
    ``phase`` is the phase it was limited to (None: every phase)."""

    applied: list[Done] = field(default_factory=list)
    pending_before: int = 0
    phase: str | None = None
    dry_run: bool = False
    would_apply: list[MigrationFile] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "applied": [done.to_json() for done in self.applied],
            "failed": self.failed.to_json() if self.failed else None,
            "pending_before": self.pending_before,
            "phase": self.phase,
            **self._common(),
        }
        if self.dry_run:
            data["dry_run"] = True
            data["would_apply"] = [_ref_phase(m) for m in self.would_apply]
        return data


@dataclass
class RevertResult(_RunResult):
    """What ``revert`` did; ``not_revertible`` are targets without ``revert`` or without a file."""

    reverted: list[Done] = field(default_factory=list)
    not_revertible: list[AppliedRow] = field(default_factory=list)
    dry_run: bool = False
    would_revert: list[AppliedRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "reverted": [done.to_json() for done in self.reverted],
            "failed": self.failed.to_json() if self.failed else None,
            "not_revertible": [_ref(row) for row in self.not_revertible],
            **self._common(),
        }
        if self.dry_run:
            data["dry_run"] = True
            data["would_revert"] = [_ref(row) for row in self.would_revert]
        return data


def parse_last_key(text: str) -> Any:
    """A checkpoint's ``last_key`` column (JSON) as a value for the JSON answers."""
    try:
        return json.loads(text)
    except ValueError:
        return text
