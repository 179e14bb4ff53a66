"""The migrate steps of a deploy: the runner applies one phase's pending migrations on the
migration host, and this module makes sure the deploy knows what really committed.

"Never switch back while a runner may still commit" (DESIGN §3, Interruptions): after Ctrl-C
or SIGTERM the runner is stopped (SIGTERM to its process group: it rolls back the migration in
flight); after a lost connection it is waited for (within ``datamig.timeout``) over a new
connection; past ``datamig.timeout`` it is stopped. Then the ledger decides: every pending
migration applied means the deploy goes on with the new code; otherwise the deploy fails and
names the migrations that stayed applied. Only when no runner can be ruled out (the host is
unreachable) does the deploy stop with exit 4, leaving every host as it is.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..exceptions import DeployToolsError, Interrupted, MigrationFailed, NeedsPerson, UsageError
from ..interrupts import Interruption, Interrupts
from ..layout import HostState
from ..output import Reporter
from ..revisions import last_ledger_id
from ..runner_client import CheckReport, Runner, RunnerAnswer, migration_failed, migration_label


@dataclass
class Outcome:
    """What one migrate step left in the ledger."""

    phase: str
    applied: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, Any] | None = None
    pending_before: int = 0
    ledger_id: str | None = None
    error: DeployToolsError | None = None

    def raise_for_failure(self) -> None:
        if self.error is not None:
            raise self.error


@dataclass
class Ledger:
    """The migrate steps of this deploy, for messages, ``--json`` and the revision line."""

    outcomes: list[Outcome] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    @property
    def ledger_id(self) -> str | None:
        return next((o.ledger_id for o in reversed(self.outcomes) if o.ledger_id), None)

    def report(self) -> dict[str, Any]:
        """The runner's apply results of every phase, as ``deploy --json`` shows them."""
        return {
            "applied": [m for o in self.outcomes for m in o.applied],
            "failed": next((o.failed for o in self.outcomes if o.failed), None),
            "pending_before": sum(o.pending_before for o in self.outcomes),
            "phases": {o.phase: [migration_label(m) for m in o.applied] for o in self.outcomes},
            "reverted": self.reverted,
        }

    def stayed_applied(self) -> list[str]:
        labels = [migration_label(m) for o in self.outcomes for m in o.applied]
        return [label for label in labels if label not in self.reverted]


def check_ledger_identity(
    check: CheckReport, states: Sequence[HostState], *, new_ledger: bool, host: str
) -> None:
    """The check step must find the ledger the last deploy used (DESIGN §4, ledger
    identity): a moved ``migrate_on`` or a replaced host would otherwise re-run every
    migration on an empty ledger."""
    last = last_ledger_id([rev for state in states for rev in state.revisions])
    if new_ledger or last is None or check.ledger_id == last:
        return
    found = f"ledger {check.ledger_id}" if check.ledger_id else "no ledger yet"
    raise UsageError(
        f"the migration host {host} has {found} ({check.ledger}), but the last deploy "
        f"recorded ledger {last}: a moved deploy.migrate_on, a --limit/--hosts choice or a "
        "replaced host would run every migration again on the wrong ledger. Point "
        "deploy.migrate_on at the host with the ledger, or pass --new-ledger if this ledger "
        "is meant to replace it. Nothing was changed."
    )


def apply(
    runner: Runner,
    start: Callable[[], RunnerAnswer],
    directory: str,
    phase: str,
    pending: list[dict[str, Any]],
    settings: Settings,
    reporter: Reporter,
    interrupts: Interrupts,
) -> Outcome:
    """Apply ``phase``'s pending migrations (``start`` asks the runner to, and returns its
    answer) and settle what happened. Returns only once no runner works any more; raises
    NeedsPerson (``unsettled``) when that cannot be known."""
    outcome = Outcome(phase=phase, pending_before=len(pending))
    interrupted: Interruption | None = None
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="runner") as pool:
        future = pool.submit(start)
        while True:
            try:
                answer = future.result()
                break
            except Interruption as signal:
                interrupted = signal
                with interrupts.shielded():
                    reporter.warn(
                        f"{signal.name}: stopping the migration runner on {runner.host} (the "
                        "migration in flight rolls back), then deciding from the ledger"
                    )
                    _stop(runner)
                    answer = future.result()
                break
    with interrupts.shielded():
        if answer.timed_out:
            reporter.warn(
                f"the migrations ran past datamig.timeout ({settings.datamig_timeout:g} s): "
                "stopping the runner"
            )
            _stop(runner)
        elif answer.connection_lost and interrupted is None:
            reporter.warn(
                f"the connection to {runner.host} was lost while migrations ran: waiting for "
                "the runner there to finish, then reading the ledger"
            )
            _reconnect_and_wait(runner, settings)
        _settle(outcome, answer, runner, directory, pending, interrupted, settings)
    for applied in outcome.applied:
        reporter.note(f"  applied {migration_label(applied)} in {applied.get('duration_ms')} ms")
    if not pending:
        reporter.note("  no pending migrations")
    return outcome


def _settle(
    outcome: Outcome,
    answer: RunnerAnswer,
    runner: Runner,
    directory: str,
    pending: list[dict[str, Any]],
    interrupted: Interruption | None,
    settings: Settings,
) -> None:
    """Fill ``outcome`` from the runner's answer, or from the ledger when there was none."""
    data = answer.data or {}
    outcome.ledger_id = data.get("ledger_id")
    if answer.ok and interrupted is None:
        outcome.applied = list(data.get("applied") or [])
        return
    if answer.data is not None and not answer.timed_out and interrupted is None:
        # the runner answered: a migration failed, or it refused to start (lock, files)
        outcome.applied = list(data.get("applied") or [])
        outcome.failed = data.get("failed")
        if outcome.failed:
            outcome.error = migration_failed(outcome.failed, f" on {runner.host}")
        else:
            # whatever the runner's exit code meant, the deploy is undone here: exit 1
            outcome.error = MigrationFailed(str(answer.error("the migration runner")))
        return
    # no usable answer (interrupted, lost, timed out): the ledger says what committed
    status = runner.status(directory)
    if status.data is None:
        raise _unsettled(runner.host, f"the ledger could not be read: {status.message}")
    states = {m.get("version"): m for m in status.data.get("migrations", [])}
    outcome.ledger_id = status.data.get("ledger_id") or outcome.ledger_id
    outcome.applied = [
        {**m, "duration_ms": states[m.get("version")].get("duration_ms")}
        for m in pending
        if states.get(m.get("version"), {}).get("state") in ("applied", "changed")
    ]
    applied_versions = {m.get("version") for m in outcome.applied}
    not_applied = [m for m in pending if m.get("version") not in applied_versions]
    if not not_applied:
        return  # every migration committed: the new code stays (DESIGN §3)
    failed = next(
        (
            states[m.get("version")]
            for m in not_applied
            if states.get(m.get("version"), {}).get("state") == "failed"
        ),
        None,
    )
    if failed is not None and interrupted is None:
        outcome.failed = failed
        outcome.error = migration_failed(failed, f" on {runner.host}")
        return
    names = ", ".join(migration_label(m) for m in not_applied)
    if interrupted is not None:
        outcome.error = Interrupted(
            f"interrupted ({interrupted.name}) during migrate; not applied: {names}"
        )
    elif answer.timed_out:
        outcome.error = MigrationFailed(
            f"the migrations took longer than datamig.timeout ({settings.datamig_timeout:g} s) "
            f"and were stopped; not applied: {names}"
        )
    else:
        outcome.error = MigrationFailed(
            f"the connection to {runner.host} was lost during migrate and the runner ended "
            f"without applying {names}"
        )


def _stop(runner: Runner) -> None:
    try:
        runner.stop()
    except DeployToolsError:
        try:
            runner.transport.reconnect()
            runner.stop()
        except DeployToolsError as error:
            raise _unsettled(runner.host, str(error)) from None


def _reconnect_and_wait(runner: Runner, settings: Settings) -> None:
    try:
        runner.transport.reconnect()
        runner.wait(settings.datamig_timeout)
    except DeployToolsError as error:
        if "still runs" in str(error):
            _stop(runner)
            return
        raise _unsettled(runner.host, str(error)) from None


def _unsettled(host: str, why: str) -> NeedsPerson:
    error = NeedsPerson(
        f"the outcome of the migrations on {host} is unknown ({why}): a runner may still be "
        f"working there. Check with `invoke datamig.status` and `invoke lock.status` (the "
        "runner's pid is in deploy.lock/runner.pid), then `invoke lock.release`."
    )
    error.unsettled = True  # type: ignore[attr-defined]
    return error


def revert(runner: Runner, release: str, ledger: Ledger, reporter: Reporter) -> str | None:
    """``datamig.revert_on_rollback``: revert what this release applied, newest first, before
    the code goes back. Returns what a person must look at (exit 4), or None."""
    reporter.phase("revert", f"migrations applied by {release}")
    try:
        answer = runner.revert(f"releases/{release}", release=release, skip_irreversible=True)
    except DeployToolsError as error:
        return f"reverting the migrations of {release} failed: {error}"
    data = answer.data or {}
    for item in data.get("reverted", []):
        ledger.reverted.append(migration_label(item))
        reporter.note(f"  reverted {migration_label(item)}")
    problems = []
    if data.get("not_revertible"):
        names = ", ".join(migration_label(m) for m in data["not_revertible"])
        problems.append(f"not reverted (no revert()): {names}")
    if data.get("failed"):
        problems.append(
            f"revert of {migration_label(data['failed'])} failed: {data['failed'].get('error')}"
        )
    if not answer.ok and not problems:
        problems.append(f"the runner failed: {answer.message}")
    if not problems:
        return None
    return (
        f"migrations of {release} on {runner.host} were not all reverted: "
        + "; ".join(problems)
        + f". Check `invoke datamig.status --release {release}`."
    )
