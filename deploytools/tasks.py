"""The invoke tasks: ``from deploytools.tasks import ns`` in an application's ``tasks.py``.

A thin shell: each task reads flags and invoke's config, calls one ``deploytools`` function,
renders its answer, and maps a DeployToolsError to its exit code here, in ``_command``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Collection, Exit, task

from .config import DEFAULTS, Settings, load_settings
from .exceptions import DeployToolsError
from .output import Reporter

HOSTS_HELP = "comma-separated hosts overriding deploy.hosts (e.g. deploy@web1,deploy@web2)"
JSON_HELP = "print one JSON object on stdout and nothing else there"


def _command(function: Callable[..., Any]) -> Callable[..., Any]:
    """Give the task a Reporter and Settings; turn DeployToolsError into its exit code."""

    @functools.wraps(function)
    def wrapper(c, *args: Any, **kwargs: Any) -> None:
        json_mode = bool(kwargs.get("json"))
        reporter = Reporter(json_mode=json_mode)
        try:
            settings = load_settings(c.config, kwargs.get("hosts"))
            function(c, settings, reporter, *args, **kwargs)
        except DeployToolsError as error:
            result = getattr(error, "result", None)
            if not json_mode and getattr(result, "hosts", None):
                _hosts_table(reporter, f"{result.release}: {result.status}", result.hosts)
            reporter.error(str(error))
            if json_mode:
                if result is not None:
                    reporter.emit_json(result.to_json())
                else:
                    reporter.emit_json({"status": "failed", "error": str(error)})
            raise Exit(code=error.exit_code) from None

    # invoke reads the task's signature: hide the two injected parameters from it
    wrapper.__signature__ = _without_injected(function)  # type: ignore[attr-defined]
    return wrapper


def _without_injected(function: Callable[..., Any]):
    import inspect

    signature = inspect.signature(function)
    parameters = [
        p for p in signature.parameters.values() if p.name not in ("settings", "reporter")
    ]
    return signature.replace(parameters=parameters)


# -- deploys ------------------------------------------------------------------------------------


@task(help={"hosts": HOSTS_HELP})
@_command
def setup(c, settings: Settings, reporter: Reporter, hosts=None):
    """Create the host layout (releases/, shared/; parents of the root included)."""
    from .admin import setup as setup_hosts

    roots = setup_hosts(settings)
    reporter.table("setup", ["host", "root"], [[name, root] for name, root in roots.items()])


@task(
    help={
        "ref": "the git commit, branch or tag to release (default HEAD)",
        "dry-run": "print the plan (hosts, release id, phases, pending migrations); change nothing",
        "json": JSON_HELP,
        "hosts": HOSTS_HELP,
    }
)
@_command
def deploy(
    c, settings: Settings, reporter: Reporter, ref="HEAD", dry_run=False, json=False, hosts=None
):
    """Build, upload, switch `current`, run pending data migrations; roll back on failure."""
    from .deploy import deploy as deploy_release
    from .plan import plan

    if dry_run:
        the_plan = plan(settings, ref=ref, reporter=reporter)
        if json:
            reporter.emit_json(the_plan)
        return
    result = deploy_release(settings, ref=ref, reporter=reporter)
    if json:
        reporter.emit_json(result.to_json())
        return
    _hosts_table(reporter, f"deployed {result.release}", result.hosts)


def _hosts_table(reporter: Reporter, title: str, hosts: list[dict[str, Any]]) -> None:
    reporter.table(
        title,
        ["host", "current", "commands", "connections"],
        [[h["host"], h["current"], h["commands"], h["connections"]] for h in hosts],
    )


@task(
    help={
        "to": "the release id to switch to (default: the rollback target)",
        "revert-migrations": "first revert the migrations the rolled-back release applied",
        "json": JSON_HELP,
        "hosts": HOSTS_HELP,
    }
)
@_command
def rollback(
    c,
    settings: Settings,
    reporter: Reporter,
    to=None,
    revert_migrations=False,
    json=False,
    hosts=None,
):
    """Switch every host back to the previous release (or --to ID)."""
    from .rollback import rollback as rollback_hosts

    result = rollback_hosts(
        settings,
        to=to,
        revert_migrations=True if revert_migrations else None,
        reporter=reporter,
    )
    if json:
        reporter.emit_json(result.to_json())
    else:
        reporter.note(f"rolled back from {result.previous} to {result.release} on every host")


@task(help={"json": JSON_HELP, "hosts": HOSTS_HELP})
@_command
def releases(c, settings: Settings, reporter: Reporter, json=False, hosts=None):
    """List the releases on every host, marking current, failed and the rollback target."""
    from .admin import releases as list_releases

    listing = list_releases(settings)
    if json:
        reporter.emit_json(
            {
                "hosts": [
                    {
                        "host": host,
                        "current": next((r.id for r in items if r.current), None),
                        "releases": [vars(r) for r in items],
                    }
                    for host, items in listing.items()
                ]
            }
        )
        return
    rows = []
    for host, items in listing.items():
        for item in items:
            marks = [
                label
                for label, on in (
                    ("current", item.current),
                    ("failed", item.failed),
                    ("rollback target", item.rollback_target),
                )
                if on
            ]
            rows.append([host, item.id, ", ".join(marks)])
    reporter.table("releases", ["host", "release", ""], rows)


# -- locks --------------------------------------------------------------------------------------


@task(name="status", help={"json": JSON_HELP, "hosts": HOSTS_HELP})
@_command
def lock_status(c, settings: Settings, reporter: Reporter, json=False, hosts=None):
    """Show who holds the deploy lock on each host."""
    from .admin import lock_status as read_locks
    from .lock import LockOwner

    locks = read_locks(settings)
    if json:
        reporter.emit_json({"hosts": [{"host": h, "lock": owner} for h, owner in locks.items()]})
        return
    rows = []
    for host, owner in locks.items():
        if owner is None:
            rows.append([host, "free"])
        else:
            rows.append([host, LockOwner(**owner).describe() if owner else "held (no owner.json)"])
    reporter.table("deploy locks", ["host", "lock"], rows)


@task(name="release", help={"hosts": HOSTS_HELP})
@_command
def lock_release(c, settings: Settings, reporter: Reporter, hosts=None):
    """Remove the deploy lock on every host, without a prompt (only if no deploy is running)."""
    from .admin import lock_release as break_locks

    removed = break_locks(settings)
    for host, owner in removed.items():
        reporter.note(f"{host}: {'removed the lock' if owner is not None else 'was not locked'}")


# -- data migrations ----------------------------------------------------------------------------


@task(
    name="status",
    help={
        "release": "read the migrations of releases/<ID> instead of current",
        "json": JSON_HELP,
        "hosts": HOSTS_HELP,
    },
)
@_command
def datamig_status(c, settings: Settings, reporter: Reporter, release=None, json=False, hosts=None):
    """Show applied, pending, failed, changed and missing migrations (on the migration host)."""
    from .remote_datamig import remote_status, render_status

    answer = remote_status(settings, release=release)
    if json:
        reporter.emit_json(answer)
    else:
        render_status(answer, settings.migrate_on.name)


@task(name="apply", help={"json": JSON_HELP, "hosts": HOSTS_HELP})
@_command
def datamig_apply(c, settings: Settings, reporter: Reporter, json=False, hosts=None):
    """Apply pending migrations of `current` on the migration host (no deploy)."""
    from .remote_datamig import remote_apply, render_apply

    answer = remote_apply(settings)
    if not json:
        render_apply(answer, reporter)
    if answer.get("failed"):
        raise answer.error()
    if json:
        reporter.emit_json(answer)


@task(name="new", help={"name": "snake_case name of the migration"})
@_command
def datamig_new(c, settings: Settings, reporter: Reporter, name):
    """Create migrations/<UTC now>_<name>.py from the template."""
    from .datamig.new import new_migration

    path = new_migration(Path(settings.repo) / settings.migrations_path, name)
    reporter.note(f"created {path}")


lock = Collection("lock")
lock.add_task(lock_status, "status")
lock.add_task(lock_release, "release")

datamig = Collection("datamig")
datamig.add_task(datamig_status, "status")
datamig.add_task(datamig_apply, "apply")
datamig.add_task(datamig_new, "new")

ns = Collection(setup, deploy, rollback, releases, lock, datamig)
ns.configure({key: dict(value) for key, value in DEFAULTS.items()})
