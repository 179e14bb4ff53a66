"""``invoke deploy --dry-run``: what a deploy would do, found without changing anything.

It runs the build (the release id, its files and migrations, the same checks), the preflight
of every host without taking the lock (a held lock, a missing shared file, a root that is not
set up, no room: the same errors and exit codes as the deploy), and the check step on the
migration host: the new migration files are staged beside the releases for a moment, the
runner's read-only ``check`` imports them in the current release's environment, reaches the
ledger and Redis and compares versions, and the copy is removed. Nothing is locked, switched
or recorded; the exit code is the one the deploy would have. (When the lock file changed, the
imports need the new environment, which a dry run does not build: they are left to the
deploy's own check step, and the dry run says so.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .config import Settings
from .datamig.discovery import pad_version
from .deploy import environment
from .deploy.build import Release, build_release, uncommitted_changes
from .deploy.migrate import check_ledger_identity
from .exceptions import LockHeld, UsageError
from .hosts import HostGroup, checked
from .layout import (
    EnvironmentProbe,
    HostState,
    preflight_script,
    stage_dry_run_script,
    unstage_dry_run_script,
)
from .lock import LockOwner
from .output import Reporter
from .runner_client import CheckReport, Runner, RunnerAnswer

PHASES = [
    "build",
    "preflight",
    "upload",
    "environment",
    "check",
    "before_switch",
    "switch",
    "migrate",
    "restart",
    "finish",
]


def plan(
    settings: Settings,
    *,
    ref: str = "HEAD",
    reporter: Reporter | None = None,
    new_ledger: bool = False,
) -> dict[str, Any]:
    """The deploy plan as a dict (printed as a table, or as JSON with --json). Raises what
    the deploy would raise before changing anything."""
    reporter = reporter or Reporter()
    hosts = list(settings.targets)
    if settings.migrate_on not in hosts:
        hosts.insert(0, settings.migrate_on)
    with tempfile.TemporaryDirectory(prefix="deploytools-") as workdir:
        release = build_release(
            settings.repo,
            ref,
            settings.migrations_path,
            Path(workdir),
            build=settings.build,
            migrations_path_explicit=settings.migrations_path_explicit,
            requirements=settings.requirements,
            venv=settings.venv,
            on_line=lambda line: reporter.stream("build", line),
        )
        owner = LockOwner.mine(release.id)
        probe = None
        if release.lock_file:
            probe = EnvironmentProbe(
                settings.venv_python, environment.wheel_dirs(settings.install_args)
            )
        with HostGroup(settings, hosts) as group:
            states: dict[str, HostState] = group.run(
                "preflight",
                lambda t: HostState.parse(
                    checked(
                        t.run_script(
                            preflight_script(
                                t.target.root,
                                owner=owner,
                                release=release.id,
                                need_kb=release.need_kb,
                                shared_files=settings.shared_files,
                                probe=probe,
                                take=False,
                            )
                        ),
                        "preflight",
                    ).stdout
                ),
            )
            _refuse_held_locks(states, reporter)
            ledger = None
            if release.migrations:
                ledger = _read_ledger(settings, group, states, release, new_ledger, reporter)
    warnings = list(ledger.warnings) if ledger else []
    dirty = uncommitted_changes(settings.repo) if ref == "HEAD" else []
    if dirty:
        warnings.append(f"uncommitted changes are NOT in the release: {', '.join(dirty[:5])}")
    if settings.limited:
        left_out = [t.name for t in settings.fleet if t not in settings.targets]
        warnings.append(
            f"only {', '.join(t.name for t in settings.targets)} would switch: "
            f"{', '.join(left_out)} stay on their release (the fleet is split until they "
            "are deployed too)"
        )
    phases = [
        phase
        for phase in PHASES
        if (phase not in ("check", "migrate") or release.migrations)
        and (phase != "environment" or release.lock_file)
        and (phase != "before_switch" or settings.before_switch)
        and (phase != "restart" or any(t.restart or t.health for t in settings.targets))
    ]
    pending = [f"{m['version']}_{m['name']}" for m in (ledger.pending if ledger else [])]
    the_plan = {
        "release": release.id,
        "sha": release.sha,
        "ref": ref,
        "phases": phases,
        "migrate_on": settings.migrate_on.name if release.migrations else None,
        "pending_migrations": pending,
        "ledger": ledger.ledger if ledger else None,
        "ledger_id": ledger.ledger_id if ledger else None,
        "warnings": warnings,
        "hosts": [
            {
                "host": name,
                "root": state.root,
                "current": state.current,
                "locked": state.locked,
                "switches": any(t.name == name for t in settings.targets),
                "keep_releases": settings.keep_releases,
            }
            for name, state in states.items()
        ],
    }
    if not reporter.json_mode:
        reporter.note(f"dry run: would deploy {release.id} ({ref} at {release.sha[:12]})")
        reporter.note("phases: " + " → ".join(phases))
        reporter.table(
            "hosts",
            ["host", "root", "current release", "lock", "switches"],
            [
                [
                    h["host"],
                    h["root"],
                    h["current"] or "(none)",
                    "HELD" if h["locked"] else "free",
                    "yes" if h["switches"] else "no (runs migrations only)",
                ]
                for h in the_plan["hosts"]
            ],
        )
        reporter.note("pending migrations: " + (", ".join(pending) if pending else "none"))
        for warning in warnings:
            reporter.warn(warning)
        reporter.note("nothing was changed")
    return the_plan


def _refuse_held_locks(states: dict[str, HostState], reporter: Reporter) -> None:
    """A held lock stops a deploy with exit 3, unless its owner died on this machine (the
    deploy would recover first)."""
    for name, state in states.items():
        if not state.locked:
            continue
        owner = state.lock
        if owner is not None and owner.alive() is False:
            reporter.warn(
                f"{name}: the lock of a dead deploy ({owner.describe()}) would be recovered first"
            )
            continue
        holder = owner.describe() if owner else "an unknown owner (no owner.json)"
        raise LockHeld(f"the deploy lock on {name} is held by {holder}; a deploy would exit 3")


def _read_ledger(
    settings: Settings,
    group: HostGroup,
    states: dict[str, HostState],
    release: Release,
    new_ledger: bool,
    reporter: Reporter,
) -> CheckReport:
    """The check step, as a deploy would run it, on a copy of the new migrations staged
    beside the releases (and removed right after): imports, the ledger, Redis, versions.
    When the release's lock file changed, imports need the new environment, which a dry run
    does not build: the ledger is checked, the imports are left to the deploy."""
    host = settings.migrate_on.name
    state = states[host]
    transport = group.transports[host]
    runner = Runner(transport, settings)
    directory = "current" if state.current else "."
    if not _same_environment(release, state.manifest):
        reporter.warn(
            "the lock file changed: the new migrations are imported by the deploy's check "
            "step (a dry run builds no environment); the ledger and Redis are checked here"
        )
        report = runner.check(directory, path="releases/.no-migrations")
        return _with_pending(runner, directory, report, release, states, new_ledger, host)
    name = f".dry-run-{release.id}"
    folder = "/".join(p for p in settings.migrations_path.split("/") if p not in ("", "."))
    files = [path for path in release.entries if folder == "" or path.startswith(folder + "/")]
    archive, _sha256, compression = release.repair_archive(files, "dry-run")
    transport.put(archive, f"{state.root}/{name}.tar.gz")
    try:
        stage = stage_dry_run_script(transport.target.root, name, compression)
        checked(transport.run_script(stage), "check")
        report = runner.check(directory, path=f"{state.root}/{name}/{folder}".rstrip("/"))
    finally:
        transport.run_script(unstage_dry_run_script(transport.target.root, name))
    check_ledger_identity(report, list(states.values()), new_ledger=new_ledger, host=host)
    return report


def _same_environment(release: Release, current: dict[str, Any] | None) -> bool:
    """Whether the new release's lock file is byte for byte the current release's."""
    if release.lock_file is None:
        return True
    mine = release.entries[release.lock_file.name].sha256
    theirs = {f.get("path"): f.get("sha256") for f in (current or {}).get("files", [])}
    return theirs.get(release.lock_file.name) == mine


def _with_pending(
    runner: Runner,
    directory: str,
    report: CheckReport,
    release: Release,
    states: dict[str, HostState],
    new_ledger: bool,
    host: str,
) -> CheckReport:
    """Pending migrations from the ledger's status, for a check that imported nothing."""
    data = _read_only(runner.status(directory), "reading")
    applied = {
        pad_version(m["version"]): m
        for m in data.get("migrations", [])
        if m.get("state") in ("applied", "changed", "missing")
    }
    for stem in release.migrations:
        version, name = stem.split("_", 1)
        row = applied.get(pad_version(version))
        if row is None:
            report.pending.append({"version": version, "name": name})
        elif row.get("name") != name:
            raise UsageError(
                f"version {version} is in the ledger as {row['version']}_{row['name']} but this "
                f"release has {stem}.py: a version names one migration. Give {stem}.py a new "
                "version (`invoke datamig.new`), or restore its name; a deploy would exit 2"
            )
    check_ledger_identity(report, list(states.values()), new_ledger=new_ledger, host=host)
    return report


def _read_only(answer: RunnerAnswer, doing: str) -> dict[str, Any]:
    """The runner's answer, or the error a deploy's check step would give (exit 2 for a
    finding: nothing changes; exit 1 when the host did not answer)."""
    if answer.data is not None and answer.exit_code == 0:
        return answer.data
    error = answer.error(f"{doing} the migration ledger")
    if answer.exit_code not in (2, 3) and not (answer.connection_lost or answer.timed_out):
        error = UsageError(str(error))
    raise error
