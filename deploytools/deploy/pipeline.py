"""A deploy, top to bottom (DESIGN §3):

    build → preflight → upload → environment → check → before_switch → switch → migrate
          → restart (+ health, in batches) → after_restart migrations → finish

or, when anything fails, the undo. Every phase runs on its hosts in parallel and is a barrier
(``HostGroup.run``). Each host's progress is a ``HostProgress`` (``state.py``): the furthest
step it reached, "maybe" included after a lost connection or a time limit, so the undo is a
table, state → action (``state.UNDO``):

- before any host switched: the new release is removed and the locks released; ``current``,
  the ledger and ``revisions.jsonl`` are untouched;
- after a switch: every host goes back to the release it ran before, ``restart`` runs again
  where it had run (so the old code serves), the attempt is logged as failed with the
  migrations that stayed applied, the locks are released.

A migration runner that may still commit is never raced: after Ctrl-C, SIGTERM or a lost
connection during migrate the runner is stopped (or waited for) first and the ledger decides.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import faults
from ..config import Settings, Target
from ..exceptions import (
    DeployToolsError,
    HostError,
    Interrupted,
    LockHeld,
    NeedsPerson,
    TransportError,
)
from ..hosts import HostGroup
from ..hosts.transport import Transport
from ..interrupts import Interruption, Interrupts, interruptible
from ..layout import (
    EnvironmentProbe,
    HostState,
    abort_script,
    finish_script,
    log_and_unlock_script,
    phase_script,
    preflight_script,
    switch_back_script,
    switch_script,
)
from ..lock import LockOwner, deployer, process_started_at, utc_now
from ..output import Reporter
from ..revisions import Revision, releases_to_remove, rollback_target
from ..runner_client import CheckReport, Runner, RunnerAnswer, Session, migration_label
from . import environment, hooks, migrate, recovery, upload
from .build import Release, build_release, uncommitted_changes
from .state import HostProgress, Step


@dataclass
class DeployResult:
    """The outcome of a deploy, as ``deploy --json`` prints it (DESIGN §5)."""

    release: str | None
    status: str  # succeeded | rolled_back | failed
    error: str | None = None
    migrations: dict[str, Any] | None = None
    stayed_applied: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    recovered: dict[str, Any] | None = None
    ledger_id: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    hosts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "status": self.status,
            "error": self.error,
            "migrations": self.migrations,
            "stayed_applied": self.stayed_applied,
            "warnings": self.warnings,
            "recovered": self.recovered,
            "ledger_id": self.ledger_id,
            "phases": self.phases,
            "hosts": self.hosts,
        }


def deploy(
    settings: Settings,
    *,
    ref: str = "HEAD",
    reporter: Reporter | None = None,
    new_ledger: bool = False,
) -> DeployResult:
    """Deploy ``ref``. Returns the result on success; on failure raises a DeployToolsError
    whose ``result`` attribute holds the DeployResult (its exit code says what happened)."""
    reporter = reporter or Reporter()
    hosts = _involved(settings)
    remove_stale_workdirs()
    with (
        interruptible() as interrupts,
        tempfile.TemporaryDirectory(prefix=f"deploytools-{os.getpid()}-") as workdir,
        HostGroup(settings, hosts) as group,
    ):
        group.connect_in_background()  # connecting overlaps with the build
        started = time.monotonic()
        release = _build(settings, ref, Path(workdir), reporter)
        run = Deploy(settings, group, release, reporter, interrupts, new_ledger=new_ledger)
        run.result.phases["build"] = round(time.monotonic() - started, 3)
        return run.execute()


def remove_stale_workdirs() -> None:
    """The build directories of deploys killed on this machine (``deploytools-<pid>-*`` whose
    process is gone): a killed process cannot clean up after itself."""
    for path in Path(tempfile.gettempdir()).glob("deploytools-*-*"):
        pid = path.name.split("-")[1]
        try:
            mine = path.is_dir() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and pid.isdigit() and process_started_at(int(pid)) is None:
            shutil.rmtree(path, ignore_errors=True)


def _involved(settings: Settings) -> list[Target]:
    """The hosts switched, plus the migration host when ``--limit`` left it out (check and
    migrate still run there, on its ledger; it is then not switched)."""
    hosts = list(settings.targets)
    if settings.migrate_on not in hosts:
        hosts.insert(0, settings.migrate_on)
    return hosts


def _build(settings: Settings, ref: str, workdir: Path, reporter: Reporter) -> Release:
    reporter.phase("build", f"{ref} of {settings.repo}")
    release = build_release(
        settings.repo,
        ref,
        settings.migrations_path,
        workdir,
        build=settings.build,
        migrations_path_explicit=settings.migrations_path_explicit,
        requirements=settings.requirements,
        venv=settings.venv,
        on_line=lambda line: reporter.stream("build", line),
    )
    count = len(release.migrations)
    env = f", environment from {release.lock_file.name}" if release.lock_file else ""
    reporter.note(
        f"  release {release.id} ({len(release.entries)} files, {release.unpacked_size} bytes, "
        f"{count} migration file{'' if count == 1 else 's'}{env})"
    )
    dirty = uncommitted_changes(settings.repo) if ref == "HEAD" else []
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        reporter.warn(f"uncommitted changes are NOT in the release: {shown}")
    return release


class Deploy:
    """One deploy of one release: the phases in order, and the undo."""

    def __init__(
        self,
        settings: Settings,
        group: HostGroup,
        release: Release,
        reporter: Reporter,
        interrupts: Interrupts,
        *,
        new_ledger: bool = False,
    ) -> None:
        self.settings = settings
        self.group = group
        self.release = release
        self.reporter = reporter
        self.interrupts = interrupts
        self.new_ledger = new_ledger
        self.owner = LockOwner.mine(release.id)
        self.hosts = {name: HostProgress(t) for name, t in group.transports.items()}
        self.switching = [t.name for t in settings.targets]  # the hosts whose current moves
        self.migration_host = settings.migrate_on.name
        self.result = DeployResult(release=release.id, status="failed")
        self.check: CheckReport | None = None
        self.session: Session | None = None  # the migration runner, between its steps
        self.migrations = migrate.Ledger()  # what the runner applied, for the messages

    # -- the phases, in order ----------------------------------------------------------------

    def execute(self) -> DeployResult:
        phases = [
            ("preflight", self.preflight),
            ("upload", self.upload),
            ("environment", self.environment),
            ("check", self.check_migrations),
            ("before_switch", self.before_switch),
            ("switch", self.switch),
            ("migrate", lambda: self.migrate("after_switch")),
            ("restart", self.restart),
        ]
        try:
            for name, phase in phases:
                faults.point(f"before:{name}")
                phase()
                faults.point(f"after:{name}")
        except BaseException as failure:
            raise self.undo(failure) from _cause(failure)
        self.after_restart_and_finish()
        return self.result

    def preflight(self) -> None:
        """Lock the migration host first, then the others (of two racing deploys one gets
        every lock); recover first when a dead deploy of this machine holds the locks."""
        self.reporter.phase("preflight", ", ".join(self.hosts))
        for attempt in (1, 2):
            try:
                self._on_hosts("preflight", self._preflight, [self.migration_host])
                others = [name for name in self.hosts if name != self.migration_host]
                self._on_hosts("preflight", self._preflight, others)
                return
            except LockHeld as held:
                dead = recovery.dead_owner(held)
                if attempt == 2 or dead is None:
                    raise
                self._abort_hosts()  # the locks this attempt took, before recovering
                self.result.recovered = recovery.recover(
                    self.settings, self.group, dead, self.reporter
                )

    def _preflight(self, host: HostProgress) -> None:
        target = host.transport.target
        probe = None
        if self.release.lock_file:
            probe = EnvironmentProbe(
                self.settings.venv_python, environment.wheel_dirs(self.settings.install_args)
            )
        script = preflight_script(
            target.root,
            owner=self.owner.at("preflight"),
            release=self.release.id,
            need_kb=self.release.need_kb,
            shared_files=self.settings.shared_files,
            probe=probe,
        )
        with host.attempt(Step.LOCKED):
            result = host.run(script, "preflight")
        host.state = HostState.parse(result.stdout)
        host.current = host.state.current

    def upload(self) -> None:
        """Send each host what it lacks (the delta against its current release), unpack it
        over hard links of that release, verify every file against the manifest."""
        count = len(self.hosts)
        self.reporter.phase(
            "upload", f"{len(self.release.entries)} files to {count} host{'s' * (count != 1)}"
        )
        publish = self.release.lock_file is None  # else the environment phase publishes it
        if self.release.migrations and publish:
            # the runner's python is known (no environment to build): start it now, so its
            # start-up overlaps the transfer instead of following it
            self.session = self._runner().early_session(owner=self.owner.at("upload"))
        with self.reporter.upload(list(self.hosts)) as progress:
            self._on_hosts(
                "upload",
                lambda host: upload.upload(
                    host, self.settings, self.release, self.owner.at("upload"), publish, progress
                ),
            )
        sent = [
            f"{h.name}: {h.files_sent} files, {h.payload_bytes} bytes" for h in self.hosts.values()
        ]
        self.reporter.note("  sent " + "; ".join(sent))

    def environment(self) -> None:
        """The release's Python environment, built or reused per lock file hash (§8)."""
        if self.release.lock_file is None:
            return
        self.reporter.phase("environment", f"from {self.release.lock_file.name}")
        self._on_hosts(
            "environment",
            lambda host: environment.prepare(
                host,
                self.settings,
                self.release,
                self.owner.at("environment"),
                self.reporter,
            ),
        )

    def check_migrations(self) -> None:
        """On the migration host, in the new release: the runner imports what is pending,
        reaches the ledger, and must find the ledger of the last deploy (exit 2 otherwise).
        Then ``before_switch`` migrations run, while the old code still serves."""
        if not self.release.migrations:
            return
        self.reporter.phase("check", f"migrations on {self.migration_host}")
        if self.release.lock_file and self.settings.migrate_on.python:
            self.reporter.warn(
                f"deploy.python ({self.settings.migrate_on.python}) is ignored: the release has "
                f"an environment ({self.release.lock_file.name}), whose python runs the runner"
            )
        started = time.monotonic()
        # one runner for the deploy: it checks now, and applies each phase when told
        runner = self._runner()
        directory = f"releases/{self.release.id}"
        try:
            if self.session is None or not self.session.enter(directory):
                self._close_session()
                self.session = runner.session(directory, owner=self.owner.at("check"))
            self.check = self.session.check()
        except (Interruption, HostError):
            # no answer (Ctrl-C, SIGTERM, a lost connection): the check may still run there;
            # stop it before the undo unlocks, so nothing works on unobserved
            with self.interrupts.shielded(), contextlib.suppress(DeployToolsError):
                runner.stop()
            raise
        self.result.phases["check"] = round(time.monotonic() - started, 3)
        self.result.ledger_id = self.check.ledger_id
        for warning in self.check.warnings:
            self.reporter.warn(f"{self.migration_host}: {warning}")
            self.result.warnings.append(warning)
        migrate.check_ledger_identity(
            self.check,
            [h.state for h in self.hosts.values() if h.state],
            new_ledger=self.new_ledger,
            host=self.migration_host,
        )
        names = [migration_label(m) for m in self.check.pending]
        self.reporter.note("  pending: " + (", ".join(names) if names else "none"))
        self.result.migrations = self.migrations.report()  # what migrate adds to
        if self.check.pending_in("before_switch"):
            self.migrate("before_switch")
        self._end_session_unless_needed("after_switch", "after_restart")

    def before_switch(self) -> None:
        if not self.settings.before_switch:
            return
        self.reporter.phase("before_switch", f"{len(self.settings.before_switch)} commands")
        self._on_hosts(
            "before_switch",
            lambda host: hooks.run_hooks(
                host,
                f"releases/{self.release.id}",
                "before_switch",
                self.settings.before_switch,
                self.owner.at("before_switch"),
                self.reporter,
            ),
            self.switching,
        )

    def switch(self) -> None:
        self.reporter.phase("switch", f"current -> releases/{self.release.id}")

        def switch(host: HostProgress) -> None:
            script = switch_script(
                host.transport.target.root, self.release.id, self.owner.at("switch")
            )
            with host.attempt(Step.SWITCHED):
                host.run(script, "switch")
            host.current = self.release.id

        self._on_hosts("switch", switch, self.switching)

    def migrate(self, phase: str) -> None:
        """The pending migrations of ``phase`` on the migration host, their log lines
        streamed as they come. Never returns while the runner may still be working."""
        if self.check is None or not self.check.pending_in(phase):
            return
        host = self.hosts[self.migration_host]
        self.reporter.phase("migrate", f"{phase} migrations on {self.migration_host}")
        started = time.monotonic()
        directory = f"releases/{self.release.id}"
        runner, owner = self._runner(), self.owner.at(f"migrate:{phase}")
        session = self.session
        if session is not None and session.alive:
            host.run(phase_script(host.transport.target.root, owner=owner), "migrate")

            def start() -> RunnerAnswer:
                return session.apply(phase)
        else:  # the session ended (a lost connection, a stop): one runner for this phase

            def start() -> RunnerAnswer:
                return runner.apply(directory, release=self.release.id, phase=phase, owner=owner)

        outcome = migrate.apply(
            runner,
            start,
            directory,
            phase,
            self.check.pending_in(phase),
            self.settings,
            self.reporter,
            self.interrupts,
        )
        self.result.phases[f"migrate:{phase}"] = round(time.monotonic() - started, 3)
        if phase == "after_switch":
            self._end_session_unless_needed("after_restart")
        self.migrations.add(outcome)
        self.result.migrations = self.migrations.report()
        self.result.ledger_id = self.migrations.ledger_id or self.result.ledger_id
        outcome.raise_for_failure()

    def restart(self) -> None:
        """``restart`` then ``health`` on every switched host, batch after batch."""
        targets = [self.hosts[name].transport.target for name in self.switching]
        if not any(t.restart or t.health for t in targets):
            return
        batches = self.settings.restart_batches(targets)
        for number, batch in enumerate(batches, start=1):
            names = [t.name for t in batch]
            label = f"batch {number}/{len(batches)}: " if len(batches) > 1 else ""
            self.reporter.phase("restart", label + ", ".join(names))

            def restart(host: HostProgress) -> None:
                # a failed restart may have stopped the old server: always undo it
                with host.attempt(Step.RESTARTED, undone_on_failure=False):
                    hooks.restart(host, self.settings, self.owner.at("restart"), self.reporter)

            self._on_hosts("restart", restart, names)

    def after_restart_and_finish(self) -> None:
        """``after_restart`` migrations (a failure leaves the new code live: exit 4), then
        log, clean up and unlock. The release is live from here on."""
        self.result.status = "succeeded"
        late: DeployToolsError | None = None
        try:
            faults.point("before:after_restart")
            self.migrate("after_restart")
        except DeployToolsError as failure:
            late = NeedsPerson(
                f"{failure}\nThe new release {self.release.id} stays live (after_restart "
                "migrations run once the new code serves); fix the migration and run "
                "`invoke datamig.apply`."
            )
            self.result.error = str(late)
        except Interruption:
            late = NeedsPerson(
                f"interrupted during the after_restart migrations of {self.release.id}, which "
                "stays live; check `invoke datamig.status` and run `invoke datamig.apply`."
            )
            self.result.error = str(late)
        finally:
            self._end_session_unless_needed()  # it exits while the deploy finishes
        try:
            self.finish(error=str(late) if late else None)
        except DeployToolsError as failure:
            late = NeedsPerson(
                f"{self.release.id} is live on every host, but {failure}. Check "
                "revisions.jsonl there and run `invoke lock.release` if a lock is left."
            )
            self.result.error = str(late)
        finally:
            self._close_session()
        self.result.hosts = self._host_report()
        if late is not None:
            late.result = self.result  # type: ignore[attr-defined]
            raise late

    def finish(self, error: str | None = None) -> None:
        faults.point("before:finish")
        self.reporter.phase("finish", "log, clean up, unlock")
        common = set.intersection(
            *(set(h.state.releases) for h in self.hosts.values() if h.state)
        ) | {self.release.id}

        def finish(host: HostProgress) -> None:
            if host.name not in self.switching:
                # the migration host outside --limit: it ran the migrations, nothing else
                with host.attempt(Step.FINISHED):
                    host.run(
                        abort_script(host.transport.target.root, owner=self.owner, discard=None),
                        "finish",
                    )
                return
            assert host.state is not None
            revision = self._revision(host, "succeeded", error=error)
            revisions = [*host.state.revisions, revision]
            target = rollback_target(revisions, self.release.id, common)
            remove = releases_to_remove(
                revisions,
                set(host.state.releases) | {self.release.id},
                self.settings.keep_releases,
                protected=[self.release.id, target],
            )
            script = finish_script(
                host.transport.target.root, owner=self.owner, revision=revision, remove=remove
            )
            with host.attempt(Step.FINISHED):
                host.run(script, "finish")

        self._on_hosts("finish", finish, retry=True)

    # -- undo ------------------------------------------------------------------------------------

    def undo(self, failure: BaseException) -> DeployToolsError:
        """Put every host back after ``failure`` (table: ``state.UNDO``); the error the
        user should see. Signals are noted, not obeyed, until the hosts are back."""
        with self.interrupts.shielded():
            error = self._explain(failure)
            self._close_session()  # between its steps, the runner waits: it commits nothing
            if getattr(failure, "unsettled", False):
                # a runner may still commit: switching back now could serve old code on new
                # data. Every host (and its lock) is left as it is, for a person.
                return self._finish_error(error, "failed")
            self._mark_undo()
            if not any(h.reached >= Step.SWITCHED for h in self.hosts.values()):
                error = self._name_stayed_applied(error)
                self.reporter.phase("abort", "removing the new release, releasing locks")
                problems = self._abort_hosts()
                status = "failed"
            else:
                error, problems = self._switch_back(error)
                status = "rolled_back" if not problems else "failed"
            if problems:
                details = "; ".join(f"{host}: {why}" for host, why in problems.items())
                error = NeedsPerson(
                    f"{error}\nPUTTING HOSTS BACK FAILED on {', '.join(problems)} ({details}). "
                    "Check `current`, the release and the lock there (`invoke releases`, "
                    "`invoke lock.status`)."
                )
            return self._finish_error(error, status)

    def _mark_undo(self) -> None:
        """owner.json says ``undo`` before anything is put back: if this process dies now,
        recovery must not keep the release being undone (its phase so far may say "every
        migration applied"). Best effort: a host that cannot be reached keeps its record."""
        switched = [h for h in self.hosts.values() if h.reached >= Step.SWITCHED]
        if not switched:
            return  # nothing was switched: recovery puts nothing back anyway
        phase = "undo:restart" if any(h.reached >= Step.RESTARTED for h in switched) else "undo"
        owner = self.owner.at(phase)
        with contextlib.suppress(DeployToolsError):
            self.group.run(
                "undo",
                lambda t: t.run_script(phase_script(t.target.root, owner=owner)),
                hosts=[h.name for h in self.hosts.values() if h.reached >= Step.LOCKED],
            )

    def _switch_back(self, error: DeployToolsError) -> tuple[DeployToolsError, dict[str, str]]:
        """After a switch: revert (if asked), switch back, restart where it had restarted,
        log the failed attempt, unlock. Per host, each action retried once."""
        problems: dict[str, str] = {}
        migration = getattr(error, "migration", None)
        if self.migrations.stayed_applied() and self.settings.revert_on_rollback:
            revert_problem = migrate.revert(
                self._runner(), self.release.id, self.migrations, self.reporter
            )
            if revert_problem:
                problems[self.migration_host] = revert_problem
        error = self._name_stayed_applied(error)
        self.reporter.phase("rollback", "switching every host back")
        switched = [h.name for h in self.hosts.values() if h.reached >= Step.SWITCHED]
        restarted = [  # where the new code was (maybe) started, the old code starts again
            h.name for h in self.hosts.values() if h.reached >= Step.RESTARTED and h.previous
        ]
        problems |= self._on_each("switch back", self._put_back, switched)
        restarted = [name for name in restarted if name not in problems]
        if restarted:
            self.reporter.phase("restart", "the previous release, where it had restarted")
            problems |= self._on_each(
                "restart",
                lambda host: hooks.restart(host, self.settings, None, self.reporter),
                restarted,
            )
        revision_error = str(error)
        problems |= self._on_each(
            "log and unlock",
            lambda host: self._log_and_unlock(host, revision_error, migration),
            [
                h.name
                for h in self.hosts.values()
                if h.reached >= Step.LOCKED and h.name not in problems
            ],
        )
        return error, problems

    def _end_session_unless_needed(self, *later: str) -> None:
        """Close the runner's stdin once no ``later`` phase has migrations to apply: it
        exits (it only waits between steps) while the deploy goes on."""
        if self.session is None:
            return
        if self.check is not None and any(self.check.pending_in(phase) for phase in later):
            return
        self.session.end()

    def _close_session(self) -> None:
        """End the runner's session (it reads the end of its stdin and exits)."""
        session, self.session = self.session, None
        if session is not None:
            session.close()

    def _name_stayed_applied(self, error: DeployToolsError) -> DeployToolsError:
        """The exit-1 message, ``--json`` and the revision line name the migrations that
        committed before the failure (DESIGN §3)."""
        stayed = self.migrations.stayed_applied()
        self.result.stayed_applied = stayed
        if self.migrations.outcomes:
            self.result.migrations = self.migrations.report()
        if not stayed:
            return error
        named = type(error)(
            f"{error}\nMigrations that stayed applied (they committed before the failure; "
            f"the previous release must work with them): {', '.join(stayed)}."
        )
        named.migration = getattr(error, "migration", None)  # type: ignore[attr-defined]
        return named

    def _put_back(self, host: HostProgress) -> None:
        if host.name in self.switching:
            host.run(
                switch_back_script(host.transport.target.root, target=host.previous), "switch back"
            )
        host.settle(Step.UPLOADED)
        host.current = host.previous

    def _log_and_unlock(self, host: HostProgress, error: str, migration: dict | None) -> None:
        revision = (
            self._revision(host, "failed", error=error, migration=migration)
            if host.name in self.switching and host.done < Step.FINISHED
            else None
        )
        host.run(
            log_and_unlock_script(host.transport.target.root, revision=revision, owner=self.owner),
            "log and unlock",
        )
        host.settle(Step.NONE)

    def _abort_hosts(self) -> dict[str, str]:
        def abort(host: HostProgress) -> None:
            reached = host.reached
            script = abort_script(
                host.transport.target.root,
                owner=self.owner,
                discard=self.release.id if reached >= Step.UPLOADED else None,
            )
            host.run(script, "abort")
            host.settle(Step.NONE)

        return self._on_each(
            "abort", abort, [h.name for h in self.hosts.values() if h.reached >= Step.LOCKED]
        )

    def _finish_error(self, error: DeployToolsError, status: str) -> DeployToolsError:
        self.result.status = status
        self.result.error = str(error)
        self.result.hosts = self._host_report()
        error.result = self.result  # type: ignore[attr-defined]
        return error

    def _explain(self, failure: BaseException) -> DeployToolsError:
        if isinstance(failure, Interruption):
            return Interrupted(f"deploy of {self.release.id} interrupted ({failure.name})")
        if isinstance(failure, KeyboardInterrupt):
            return Interrupted(f"deploy of {self.release.id} interrupted")
        if isinstance(failure, DeployToolsError):
            return failure
        return HostError(f"deploy of {self.release.id} failed: {type(failure).__name__}: {failure}")

    # -- helpers ---------------------------------------------------------------------------------

    def _runner(self) -> Runner:
        return Runner(
            self.hosts[self.migration_host].transport, self.settings, on_line=self.reporter.stream
        )

    def _on_hosts(
        self,
        phase: str,
        action: Callable[[HostProgress], None],
        names: Iterable[str] | None = None,
        *,
        retry: bool = False,
    ) -> None:
        """``action`` on each host (all, or ``names``) as one barrier; with ``retry``, a
        host whose connection died is tried once more on a fresh connection."""
        started = time.monotonic()

        def attempt(transport: Transport) -> None:
            host = self.hosts[transport.target.name]
            began = time.monotonic()
            try:
                action(host)
            except DeployToolsError as error:
                if not (retry and getattr(error, "retryable", False)):
                    raise
                transport.reconnect()
                action(host)
            finally:
                host.phases[phase] = round(host.phases.get(phase, 0) + time.monotonic() - began, 3)

        try:
            self.group.run(phase, attempt, hosts=list(self.hosts) if names is None else names)
        finally:
            self.result.phases[phase] = round(
                self.result.phases.get(phase, 0) + time.monotonic() - started, 3
            )

    def _on_each(
        self, phase: str, action: Callable[[HostProgress], None], names: list[str]
    ) -> dict[str, str]:
        """An undo action everywhere, each host retried once on a fresh connection; returns
        the hosts where it still failed, with why."""
        if not names:
            return {}

        def attempt(host: HostProgress) -> None:
            faults.point(f"undo:{phase}")
            try:
                action(host)
            except Exception as error:
                # a new connection helps when the last one died, not when the host said no
                if isinstance(error, DeployToolsError) and not (
                    getattr(error, "retryable", False) or isinstance(error, TransportError)
                ):
                    raise
                host.transport.reconnect()
                action(host)

        try:
            self._on_hosts(phase, attempt, names)
        except DeployToolsError as error:
            failed = getattr(error, "errors", {})
            return {host: str(problem) for host, problem in failed.items()}
        return {}

    def _revision(
        self,
        host: HostProgress,
        status: str,
        error: str | None = None,
        migration: dict | None = None,
    ) -> Revision:
        user, who = deployer()
        return Revision(
            action="deploy",
            release=self.release.id,
            previous=host.previous,
            sha=self.release.sha,
            ref=self.release.ref,
            user=user,
            host=who,
            at=utc_now(),
            status=status,  # type: ignore[arg-type]
            error=error,
            migration=migration,
            ledger=self.result.ledger_id if status == "succeeded" else None,
            stayed_applied=self.result.stayed_applied or None,
        )

    def _host_report(self) -> list[dict[str, Any]]:
        return [
            {
                "host": name,
                "current": host.current,
                "switched": name in self.switching,
                "commands": host.transport.commands,
                "connections": host.transport.connections,
                "bytes_sent": getattr(host.transport, "bytes_sent", 0),
                "files_sent": host.files_sent,
                "environment": host.environment,
                "phases": host.phases,
                "hooks": host.hooks,
                "reached": host.reached.name.lower(),
            }
            for name, host in self.hosts.items()
        ]


def _cause(failure: BaseException) -> BaseException | None:
    return None if isinstance(failure, KeyboardInterrupt) else failure
