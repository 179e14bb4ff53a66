"""A deploy, top to bottom: build → preflight → upload → switch → migrate → health → finish,
or, when anything fails, put every host back as it was.

Every phase runs on all hosts in parallel and is a barrier (``HostGroup.run``). What each host
has been through is kept in a ``HostRun``, so the undo path knows exactly what to undo:

- before every host has switched: remove the partial release it created on each host, leave
  ``current`` untouched, release the locks (nothing is logged: nothing changed);
- after a switch: switch every host back to the release that was current before (reconnecting
  where a connection died), log the failed attempt, keep the failed release for inspection,
  release the locks.

Each phase is one remote command per host over one connection per host; the migration host
runs one more (the runner), and ``health_cmd`` one more on every host.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..exceptions import (
    DeployToolsError,
    HostError,
    Interrupted,
    MigrationFailed,
    NeedsPerson,
)
from ..hosts import HostGroup, checked
from ..hosts.transport import Transport
from ..layout import (
    HostState,
    abort_script,
    finish_script,
    health_script,
    partial_archive_path,
    preflight_script,
    switch_and_unlock_script,
    switch_script,
    unpack_script,
)
from ..lock import LockOwner, deployer, utc_now
from ..output import Reporter
from ..revisions import Revision, releases_to_remove, rollback_target
from ..runner_client import RunnerAnswer, migration_failed, migration_label, python_argv, run_runner
from .build import Release, build_release


@dataclass
class HostRun:
    """One host's part in this deploy: what has been done there so far."""

    transport: Transport
    state: HostState | None = None  # read in preflight, under the lock
    locked: bool = False
    uploaded: bool = False  # releases/<id> (or its partial) may exist
    switched: bool = False
    current: str | None = None  # where `current` points now, as far as we know

    @property
    def previous(self) -> str | None:
        return self.state.current if self.state else None


@dataclass
class DeployResult:
    """The outcome of a deploy, as ``deploy --json`` prints it (DESIGN §5)."""

    release: str | None
    status: str  # succeeded | rolled_back | failed
    error: str | None = None
    migrations: dict[str, Any] | None = None
    hosts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "status": self.status,
            "error": self.error,
            "migrations": self.migrations,
            "hosts": self.hosts,
        }


def deploy(
    settings: Settings, *, ref: str = "HEAD", reporter: Reporter | None = None
) -> DeployResult:
    """Deploy ``ref`` to every host. Returns the result on success; on failure raises a
    DeployToolsError whose ``result`` attribute holds the DeployResult."""
    reporter = reporter or Reporter()
    with tempfile.TemporaryDirectory(prefix="deploytools-") as workdir:
        reporter.phase("build", f"{ref} of {settings.repo}")
        release = build_release(settings.repo, ref, settings.migrations_path, Path(workdir))
        count = len(release.migrations)
        reporter.note(
            f"  release {release.id} ({release.size} bytes, "
            f"{count} migration file{'' if count == 1 else 's'})"
        )
        with HostGroup(settings) as group:
            return _deploy_release(settings, group, release, reporter)


def _deploy_release(
    settings: Settings, group: HostGroup, release: Release, reporter: Reporter
) -> DeployResult:
    owner = LockOwner.mine(release.id)
    runs = {name: HostRun(transport) for name, transport in group.transports.items()}
    result = DeployResult(release=release.id, status="failed")
    try:
        reporter.phase("preflight", ", ".join(group.names))
        group.run("preflight", lambda t: _preflight(runs[t.target.name], settings, release, owner))

        reporter.phase("upload", f"{release.size} bytes to {len(runs)} hosts")
        with reporter.upload(group.names, release.size) as progress:
            group.run("upload", lambda t: _upload(runs[t.target.name], settings, release, progress))

        reporter.phase("switch", f"current -> releases/{release.id}")
        group.run("switch", lambda t: _switch(runs[t.target.name], release))

        if release.migrations:
            reporter.phase("migrate", f"on {settings.migrate_on.name}")
            result.migrations = _migrate(
                runs[settings.migrate_on.name], settings, release, reporter
            )

        if settings.health_cmd:
            reporter.phase("health", settings.health_cmd)
            group.run("health", lambda t: _health(runs[t.target.name], settings))
    except BaseException as failure:
        error = _undo(settings, group, runs, release, owner, failure, result, reporter)
        result.hosts = _host_report(runs)
        error.result = result  # type: ignore[attr-defined]
        if error is failure:
            raise
        raise error from (None if isinstance(failure, KeyboardInterrupt) else failure)

    reporter.phase("finish", "log, clean up, unlock")
    existing = _common_releases(runs) | {release.id}
    result.status = "succeeded"  # every host runs the new release from here on
    try:
        group.run(
            "finish", lambda t: _finish(runs[t.target.name], settings, release, owner, existing)
        )
    except DeployToolsError as failure:
        # the release is live everywhere; only the log, cleanup or lock release failed
        error = NeedsPerson(
            f"{release.id} is live on every host, but {failure}. Check revisions.jsonl there "
            "and remove a leftover lock with `invoke lock.release`."
        )
        result.error = str(error)
        result.hosts = _host_report(runs)
        error.result = result  # type: ignore[attr-defined]
        raise error from failure
    result.hosts = _host_report(runs)
    return result


# -- the phases, per host -------------------------------------------------------------------------


def _preflight(run: HostRun, settings: Settings, release: Release, owner: LockOwner) -> None:
    target = run.transport.target
    python = python_argv(target) if release.migrations and target == settings.migrate_on else None
    script = preflight_script(
        target.root,
        owner=owner,
        release=release.id,
        need_kb=release.need_kb,
        shared_files=settings.shared_files,
        python=python,
    )
    result = run.transport.run_script(script)
    checked(result, "preflight")
    state = HostState.parse(result.stdout)
    run.state = state
    run.locked = True
    run.current = state.current


def _upload(run: HostRun, settings: Settings, release: Release, progress) -> None:
    target = run.transport.target
    assert run.state is not None
    run.uploaded = True
    run.transport.put(
        release.archive,
        partial_archive_path(run.state.root, release.id),
        progress(target.name),
    )
    script = unpack_script(
        target.root,
        release=release.id,
        sha256=release.sha256,
        manifest=release.manifest(),
        shared_files=settings.shared_files,
        shared_dirs=settings.shared_dirs,
    )
    checked(run.transport.run_script(script), "upload")


def _switch(run: HostRun, release: Release) -> None:
    result = run.transport.run_script(switch_script(run.transport.target.root, release.id))
    if result.ok or result.connection_lost:
        # a lost connection may have switched: treat it as switched so it is switched back
        run.switched = True
        run.current = release.id
    checked(result, "switch")


def _migrate(run: HostRun, settings: Settings, release: Release, reporter: Reporter) -> dict:
    answer = run_runner(
        run.transport,
        settings,
        directory=f"releases/{release.id}",
        command="apply",
        args=["--release", release.id, "--lock-timeout", str(int(settings.lock_timeout))],
    )
    if answer.exit_code == 0 and answer.data is not None:
        for applied in answer.data.get("applied", []):
            reporter.note(
                f"  applied {migration_label(applied)} in {applied.get('duration_ms')} ms"
            )
        if not answer.data.get("applied"):
            reporter.note("  no pending migrations")
        return answer.data
    raise _RunnerFailed(answer)


def _health(run: HostRun, settings: Settings) -> None:
    assert settings.health_cmd
    result = run.transport.run_script(health_script(run.transport.target.root, settings.health_cmd))
    if not result.ok:
        output = (result.stderr.strip() or result.stdout.strip())[-500:]
        raise HostError(f"health check `{settings.health_cmd}` exited {result.exit_code}: {output}")


def _finish(
    run: HostRun, settings: Settings, release: Release, owner: LockOwner, existing: set[str]
) -> None:
    assert run.state is not None
    revision = _revision(release, run.previous, "succeeded")
    revisions = [*run.state.revisions, revision]
    mine = set(run.state.releases) | {release.id}
    target = rollback_target(revisions, release.id, existing)
    remove = releases_to_remove(
        revisions, mine, settings.keep_releases, protected=[release.id, target]
    )
    script = finish_script(run.transport.target.root, owner=owner, revision=revision, remove=remove)
    checked(run.transport.run_script(script), "finish")
    run.locked = False


def _revision(
    release: Release,
    previous: str | None,
    status: str,
    error: str | None = None,
    migration: dict | None = None,
) -> Revision:
    user, host = deployer()
    return Revision(
        action="deploy",
        release=release.id,
        previous=previous,
        sha=release.sha,
        ref=release.ref,
        user=user,
        host=host,
        at=utc_now(),
        status=status,  # type: ignore[arg-type]
        error=error,
        migration=migration,
    )


# -- when something failed ------------------------------------------------------------------------


class _RunnerFailed(Exception):
    """The migration runner did not report success (internal: turned into the user's error)."""

    def __init__(self, answer: RunnerAnswer) -> None:
        super().__init__(answer.host)
        self.answer = answer


def _undo(
    settings: Settings,
    group: HostGroup,
    runs: dict[str, HostRun],
    release: Release,
    owner: LockOwner,
    failure: BaseException,
    result: DeployResult,
    reporter: Reporter,
) -> BaseException:
    """Put every host back after ``failure``; return the exception the user should see."""
    error = _explain(failure, release)
    if isinstance(failure, _RunnerFailed) and failure.answer.data is not None:
        result.migrations = failure.answer.data
    if not any(run.switched for run in runs.values()):
        reporter.phase("abort", "removing the partial release, releasing locks")
        problems = _on_each(group, runs, "abort", lambda run: _abort(run, release, owner))
        result.status = "failed"
    else:
        migration_run = runs[settings.migrate_on.name]
        lost = isinstance(failure, _RunnerFailed) and failure.answer.connection_lost
        if lost:
            # the runner may have finished, failed, or still be running: ask the ledger
            error = _establish_outcome(settings, migration_run, release)
        revert_problem = None
        if settings.revert_on_rollback and release.migrations and not lost:
            revert_problem = _revert_applied(settings, migration_run, release, reporter)
        reporter.phase("rollback", "switching every host back")
        migration = getattr(error, "migration", None)
        revision_error = str(error)
        problems = _on_each(
            group,
            runs,
            "rollback",
            lambda run: _switch_back(run, release, owner, revision_error, migration),
            hosts=[name for name, run in runs.items() if run.locked],
        )
        result.status = "rolled_back" if not problems else "failed"
        if revert_problem:
            error = NeedsPerson(f"{error}\n{revert_problem}")
    if problems:
        hosts = ", ".join(problems)
        details = "; ".join(f"{host}: {message}" for host, message in problems.items())
        error = NeedsPerson(
            f"{error}\nPUTTING HOSTS BACK FAILED on {hosts} ({details}). Check `current`, the "
            "release and the lock there (`invoke releases`, `invoke lock.status`)."
        )
    result.error = str(error)
    return error


def _establish_outcome(settings: Settings, run: HostRun, release: Release) -> DeployToolsError:
    """After the migration host's connection died mid-run: reconnect and read the ledger.
    A failed migration, or every one applied, is an outcome (exit 1); migrations still
    pending mean the runner died or still runs, which only a person can tell (exit 4)."""
    host = run.transport.target.name
    versions = {stem.split("_", 1)[0] for stem in release.migrations}
    try:
        run.transport.reconnect()
        answer = run_runner(
            run.transport, settings, directory=f"releases/{release.id}", command="status", args=[]
        )
        entries = [m for m in (answer.data or {}).get("migrations", []) if m["version"] in versions]
    except DeployToolsError as error:
        answer, entries = None, []
        reason = str(error)
    else:
        reason = answer.stderr_tail() if answer.data is None else ""
    if answer is not None and answer.data is not None:
        failed = [m for m in entries if m.get("state") == "failed"]
        pending = [m for m in entries if m.get("state") == "pending"]
        if failed:
            return migration_failed(failed[0], f" on {host} (the connection was lost while it ran)")
        if not pending:
            return MigrationFailed(
                f"the connection to {host} was lost during migrate, after the runner had applied "
                f"every migration of {release.id}; the code was switched back, the migrations "
                "stay applied. Deploy again to go forward."
            )
        names = ", ".join(migration_label(m) for m in pending)
        reason = f"{names} still pending"
    return NeedsPerson(
        f"the connection to {host} was lost while migrations ran and their outcome is unknown "
        f"({reason}): the runner may have died or may still be running there. Check with "
        f"`invoke datamig.status --release {release.id}` and `invoke datamig.apply`."
    )


def _revert_applied(
    settings: Settings, run: HostRun, release: Release, reporter: Reporter
) -> str | None:
    """``datamig.revert_on_rollback``: revert what this release applied, newest first, before
    the code goes back. Returns what a person must look at, or None."""
    reporter.phase("revert", f"migrations applied by {release.id}")
    try:
        answer = run_runner(
            run.transport,
            settings,
            directory=f"releases/{release.id}",
            command="revert",
            args=["--release", release.id, "--skip-irreversible"],
        )
    except DeployToolsError as error:
        return f"reverting the migrations of {release.id} failed: {error}"
    data = answer.data or {}
    for item in data.get("reverted", []):
        reporter.note(f"  reverted {migration_label(item)}")
    problems = []
    if data.get("not_revertible"):
        names = ", ".join(migration_label(m) for m in data["not_revertible"])
        problems.append(f"not reverted (no revert()): {names}")
    if data.get("failed"):
        problems.append(
            f"revert of {migration_label(data['failed'])} failed: {data['failed'].get('error')}"
        )
    if answer.exit_code not in (0, None) and not problems:
        problems.append(f"the runner failed (exit {answer.exit_code}): {answer.stderr_tail()}")
    if answer.data is None and not problems:
        problems.append(f"no answer from the runner: {answer.stderr_tail() or 'connection lost'}")
    if not problems:
        return None
    return (
        f"Migrations of {release.id} on {run.transport.target.name} were not all reverted: "
        + "; ".join(problems)
        + ". Check `invoke datamig.status --release "
        + release.id
        + "`."
    )


def _explain(failure: BaseException, release: Release) -> BaseException:
    if isinstance(failure, KeyboardInterrupt):
        return Interrupted(f"deploy of {release.id} interrupted")
    if isinstance(failure, _RunnerFailed):
        return _runner_error(failure)
    if isinstance(failure, DeployToolsError):
        return failure
    return HostError(f"deploy of {release.id} failed: {type(failure).__name__}: {failure}")


def _runner_error(failure: _RunnerFailed) -> DeployToolsError:
    """The runner's failure as the user's error (a lost connection is explained later, by
    ``_establish_outcome``, once the ledger has been read)."""
    answer = failure.answer
    failed = (answer.data or {}).get("failed")
    if failed:
        return migration_failed(failed, f" on {answer.host}")
    # whatever the runner's own exit code meant, here the deploy was rolled back: exit 1
    return MigrationFailed(str(answer.error("the migration runner")))


def _on_each(group: HostGroup, runs, phase: str, action, hosts=None) -> dict[str, str]:
    """Run an undo action everywhere, retrying once on a fresh connection; returns the hosts
    where it still failed, with why."""

    def attempt(transport: Transport) -> None:
        run = runs[transport.target.name]
        try:
            action(run)
        except Exception:
            transport.reconnect()
            action(run)

    try:
        group.run(phase, attempt, hosts=hosts)
    except DeployToolsError as error:
        return {host: str(error) for host in getattr(error, "hosts", [])}
    return {}


def _abort(run: HostRun, release: Release, owner: LockOwner) -> None:
    if not (run.locked or run.uploaded):
        return
    script = abort_script(
        run.transport.target.root,
        owner=owner if run.locked else None,
        discard=release.id if run.uploaded else None,
    )
    checked(run.transport.run_script(script), "abort")
    run.locked = False


def _switch_back(
    run: HostRun, release: Release, owner: LockOwner, error: str, migration: dict | None
) -> None:
    revision = _revision(release, run.previous, "failed", error=error, migration=migration)
    script = switch_and_unlock_script(
        run.transport.target.root, target=run.previous, revision=revision, owner=owner
    )
    checked(run.transport.run_script(script), "rollback")
    run.switched = False
    run.locked = False
    run.current = run.previous


def _common_releases(runs: dict[str, HostRun]) -> set[str]:
    sets = [set(run.state.releases) for run in runs.values() if run.state]
    return set.intersection(*sets) if sets else set()


def _host_report(runs: dict[str, HostRun]) -> list[dict[str, Any]]:
    return [
        {
            "host": name,
            "current": run.current,
            "commands": run.transport.commands,
            "connections": run.transport.connections,
        }
        for name, run in runs.items()
    ]
