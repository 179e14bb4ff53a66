"""``revisions.jsonl``: the per-host log of deploys and rollbacks, and what it decides.

The order of releases comes from this log, never from directory times. The rollback target
follows history (DESIGN §2): the release that was live before ``current`` became live,
following rollbacks, skipping releases that failed, were interrupted or were rolled back from,
and present on every host. Cleanup removes the releases deployed longest ago. Pure functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Action = Literal["deploy", "rollback"]
Status = Literal["succeeded", "failed"]


@dataclass(frozen=True)
class Revision:
    """One line of revisions.jsonl (DESIGN §2)."""

    action: Action
    release: str | None
    previous: str | None
    sha: str | None
    ref: str | None
    user: str
    host: str
    at: str
    status: Status
    error: str | None = None
    migration: dict[str, Any] | None = None
    ledger: str | None = None  # the ledger id a succeeded deploy's migrations used
    stayed_applied: list[str] | None = None  # migrations committed by a failed deploy

    def to_line(self) -> str:
        record = asdict(self)
        for extra in ("ledger", "stayed_applied"):
            if record[extra] is None:
                del record[extra]
        return json.dumps(record, separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_line(cls, line: str) -> Revision | None:
        """Parse one line; a line that is not a revision (hand-edited, truncated) is None."""
        try:
            data = json.loads(line)
            return cls(
                action=data["action"],
                release=data.get("release"),
                previous=data.get("previous"),
                sha=data.get("sha"),
                ref=data.get("ref"),
                user=data.get("user", ""),
                host=data.get("host", ""),
                at=data.get("at", ""),
                status=data.get("status", "failed"),
                error=data.get("error"),
                migration=data.get("migration"),
                ledger=data.get("ledger"),
                stayed_applied=data.get("stayed_applied"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def parse_revisions(lines: Iterable[str]) -> list[Revision]:
    return [rev for line in lines if line.strip() and (rev := Revision.from_line(line))]


def succeeded_releases(revisions: Iterable[Revision]) -> list[str]:
    """Releases with a succeeded deploy, in the order they were first deployed."""
    order: list[str] = []
    for rev in revisions:
        if rev.action == "deploy" and rev.status == "succeeded" and rev.release not in order:
            order.append(rev.release)
    return order


def failed_releases(revisions: Iterable[Revision]) -> set[str]:
    """Releases whose deploy failed and never succeeded."""
    revisions = list(revisions)
    good = set(succeeded_releases(revisions))
    return {
        rev.release
        for rev in revisions
        if rev.action == "deploy" and rev.status == "failed" and rev.release not in good
    }


def rollback_target(
    revisions: Iterable[Revision], current: str | None, existing: Iterable[str]
) -> str | None:
    """The release that was live before ``current`` became live, following rollbacks:
    every succeeded deploy or rollback starts a live episode; an episode that a rollback
    ended, a failed (or interrupted) release and ``current`` itself are skipped, and the
    release must be among ``existing`` (present on every host). None: nothing to go back to.

    Deploy A, deploy B, roll back to A, deploy C: the target is A (B was rolled back from).
    """
    revisions = list(revisions)
    episodes = [rev for rev in revisions if rev.status == "succeeded" and rev.release is not None]
    failed = failed_releases(revisions)
    present = set(existing)
    last = max((i for i, rev in enumerate(episodes) if rev.release == current), default=None)
    earlier = range(last - 1 if last is not None else len(episodes) - 1, -1, -1)
    for index in earlier:
        release = episodes[index].release
        ended_by_rollback = episodes[index + 1].action == "rollback"
        if (
            release != current
            and not ended_by_rollback
            and release not in failed
            and release in present
        ):
            return release
    return None


def last_ledger_id(revisions: Iterable[Revision]) -> str | None:
    """The ledger the newest succeeded deploy with migrations recorded (DESIGN §4)."""
    with_ledger = [
        rev
        for rev in revisions
        if rev.action == "deploy" and rev.status == "succeeded" and rev.ledger
    ]
    return max(with_ledger, key=lambda rev: rev.at).ledger if with_ledger else None


def deploy_order(revisions: Iterable[Revision], existing: Iterable[str]) -> list[str]:
    """``existing`` oldest first: by their latest deploy in the log; releases the log does not
    mention (deployed before the log was kept) count as oldest, ordered by id."""
    last_seen: dict[str, int] = {}
    for position, rev in enumerate(revisions):
        if rev.action == "deploy" and rev.release:
            last_seen[rev.release] = position
    return sorted(existing, key=lambda release: (last_seen.get(release, -1), release))


def releases_to_remove(
    revisions: Iterable[Revision],
    existing: Iterable[str],
    keep: int,
    protected: Iterable[str | None],
) -> list[str]:
    """What cleanup removes: all but the ``keep`` newest, never a ``protected`` release
    (``current`` and its rollback target)."""
    ordered = deploy_order(revisions, existing)
    kept = set(ordered[-keep:]) | {release for release in protected if release}
    return [release for release in ordered if release not in kept]
