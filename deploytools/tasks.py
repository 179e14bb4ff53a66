"""The invoke tasks: ``from deploytools.tasks import ns`` in an application's ``tasks.py``.

A thin shell: each task reads flags and invoke's config, calls one ``deploytools`` function,
renders its answer, and maps a DeployToolsError to its exit code here, in ``_command``.
Tasks have no short flags: ``-h`` stays invoke's help, and no letter means two things.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from invoke import Collection, Exit, task

from .config import Settings, invoke_defaults, load_settings
from .exceptions import DeployToolsError
from .output import Reporter

HOSTS_HELP = "comma-separated host names from deploy.hosts (or the inventory) to act on"
LIMIT_HELP = "a pattern of hosts and roles (with an inventory: Ansible's patterns)"
STAGE_HELP = "the stage (deploy.stages) to use; also INVOKE_DEPLOY_STAGE"
JSON_HELP = "print one JSON object on stdout and nothing else there"
FLEET_HELP = {"hosts": HOSTS_HELP, "limit": LIMIT_HELP, "stage": STAGE_HELP}


def _command(function: Callable[..., Any]) -> Callable[..., Any]:
    """Give the task a Reporter and Settings; turn DeployToolsError into its exit code."""

    @functools.wraps(function)
    def wrapper(c, *args: Any, **kwargs: Any) -> None:
        json_mode = bool(kwargs.get("json"))
        reporter = Reporter(json_mode=json_mode)
        try:
            settings = load_settings(
                c.config,
                hosts=kwargs.get("hosts"),
                limit=kwargs.get("limit"),
                stage=kwargs.get("stage"),
            )
            function(c, settings, reporter, *args, **kwargs)
        except DeployToolsError as error:
            result = getattr(error, "result", None)
            if not json_mode and getattr(result, "hosts", None):
                status = str(getattr(result, "status", "failed")).replace("_", " ")
                _hosts_table(reporter, f"{result.release}: {status}", result.hosts)
            reporter.error(str(error))
            if json_mode:
                if result is not None and hasattr(result, "to_json"):
                    reporter.emit_json(result.to_json())
                else:
                    reporter.emit_json({"status": "failed", "error": str(error)})
            raise Exit(code=error.exit_code) from None

    # invoke reads the task's signature: hide the two injected parameters from it
    signature = inspect.signature(function)
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            p for p in signature.parameters.values() if p.name not in ("settings", "reporter")
        ]
    )
    return wrapper


def _task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    return task(auto_shortflags=False, **options)


# -- deploys ------------------------------------------------------------------------------------


@_task(help=FLEET_HELP)
@_command
def setup(c, settings: Settings, reporter: Reporter, hosts=None, limit=None, stage=None):
    """Create the host layout (releases/, shared/; parents of the root included)."""
    from .admin import setup as setup_hosts

    roots = setup_hosts(settings)
    reporter.table("setup", ["host", "root"], [[name, root] for name, root in roots.items()])


@_task(
    help={
        "ref": "the git commit, branch or tag to release (default HEAD)",
        "dry-run": "build, check every host and the ledger, print the plan; change nothing",
        "new-ledger": "accept a migration ledger other than the one the last deploy used",
        "json": JSON_HELP,
        **FLEET_HELP,
    }
)
@_command
def deploy(
    c,
    settings: Settings,
    reporter: Reporter,
    ref="HEAD",
    dry_run=False,
    new_ledger=False,
    json=False,
    hosts=None,
    limit=None,
    stage=None,
):
    """Build, upload, switch `current`, migrate, restart; undo everything on failure."""
    from .deploy import deploy as deploy_release
    from .plan import plan

    if dry_run:
        the_plan = plan(settings, ref=ref, reporter=reporter, new_ledger=new_ledger)
        if json:
            reporter.emit_json(the_plan)
        return
    if settings.limited:
        left_out = [t.name for t in settings.fleet if t not in settings.targets]
        reporter.warn(
            f"only {', '.join(t.name for t in settings.targets)} will switch; "
            f"{', '.join(left_out)} keep their release until deployed too"
        )
    result = deploy_release(settings, ref=ref, reporter=reporter, new_ledger=new_ledger)
    if json:
        reporter.emit_json(result.to_json())
        return
    _hosts_table(reporter, f"deployed {result.release}", result.hosts)


def _hosts_table(reporter: Reporter, title: str, hosts: list[dict[str, Any]]) -> None:
    reporter.table(
        title,
        ["host", "current release", "remote commands", "connections"],
        [
            [h["host"], h.get("current") or "(none)", h.get("commands"), h.get("connections")]
            for h in hosts
        ],
    )


@_task(
    help={
        "to": "the release id to switch to (default: the rollback target)",
        "revert-migrations": "first revert the migrations the rolled-back release applied",
        "json": JSON_HELP,
        **FLEET_HELP,
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
    limit=None,
    stage=None,
):
    """Switch every host back to the previous release (or --to ID), then restart it."""
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
        count = len(result.hosts)
        reporter.note(
            f"rolled back from {result.previous} to {result.release} on "
            f"{count} host{'' if count == 1 else 's'}"
        )


@_task(help={"json": JSON_HELP, **FLEET_HELP})
@_command
def restart(
    c, settings: Settings, reporter: Reporter, json=False, hosts=None, limit=None, stage=None
):
    """Run deploy.restart and deploy.health on every host, in batches, without deploying."""
    from .admin import restart as restart_hosts

    answer = restart_hosts(settings, reporter)
    if json:
        reporter.emit_json({"status": "succeeded", **answer})
    elif answer["restarted"]:
        reporter.note(f"restarted {', '.join(answer['restarted'])}")


@_task(help={"json": JSON_HELP, **FLEET_HELP})
@_command
def releases(
    c, settings: Settings, reporter: Reporter, json=False, hosts=None, limit=None, stage=None
):
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
    reporter.table(
        "releases",
        ["host", "release", "marks"],
        rows,
        caption="rollback target: where `invoke rollback` goes; failed: a deploy that was undone",
    )


# -- locks --------------------------------------------------------------------------------------


@_task(name="status", help={"json": JSON_HELP, **FLEET_HELP})
@_command
def lock_status(
    c, settings: Settings, reporter: Reporter, json=False, hosts=None, limit=None, stage=None
):
    """Show who holds the deploy lock on each host, and whether that process still runs."""
    from .admin import lock_status as read_locks

    locks = read_locks(settings)
    if json:
        reporter.emit_json({"hosts": [{"host": h, "lock": owner} for h, owner in locks.items()]})
        return
    rows = []
    for host, record in locks.items():
        if record is None:
            rows.append([host, "free", ""])
            continue
        if not record.get("user"):
            rows.append([host, "held (no owner.json)", ""])
            continue
        from .lock import LockOwner

        fields = {k: record[k] for k in LockOwner.__dataclass_fields__ if k in record}
        owner = LockOwner(**fields)
        runner = (
            f"; migration runner pid {record['runner_pid']} running"
            if record.get("runner_pid")
            else ""
        )
        rows.append([host, owner.describe(), record.get("alive", "unknown") + runner])
    reporter.table(
        "deploy locks",
        ["host", "lock", "owner process"],
        rows,
        caption="a dead owner's lock is recovered by the next deploy from its machine, or by "
        "`invoke lock.release`",
    )


@_task(name="release", help=FLEET_HELP)
@_command
def lock_release(c, settings: Settings, reporter: Reporter, hosts=None, limit=None, stage=None):
    """Recover from the deploy holding the lock, then remove the lock on every host."""
    from .admin import lock_release as break_locks

    removed = break_locks(settings, reporter)
    for host, owner in removed.items():
        reporter.note(f"{host}: {'removed the lock' if owner is not None else 'was not locked'}")


# -- data migrations ----------------------------------------------------------------------------


@_task(
    name="status",
    help={
        "release": "read the migrations of releases/<ID> instead of current",
        "json": JSON_HELP,
        **FLEET_HELP,
    },
)
@_command
def datamig_status(
    c,
    settings: Settings,
    reporter: Reporter,
    release=None,
    json=False,
    hosts=None,
    limit=None,
    stage=None,
):
    """Show applied, pending, failed, running and changed migrations (on the migration host)."""
    from .remote_datamig import remote_status, render_status

    answer = remote_status(settings, release=release)
    if json:
        reporter.emit_json(answer)
    else:
        render_status(answer, settings.migrate_on.name)


@_task(name="apply", help={"json": JSON_HELP, **FLEET_HELP})
@_command
def datamig_apply(
    c, settings: Settings, reporter: Reporter, json=False, hosts=None, limit=None, stage=None
):
    """Apply pending migrations of `current` on the migration host (no deploy)."""
    from .remote_datamig import remote_apply, render_apply

    answer = remote_apply(settings, reporter)
    if not json:
        render_apply(answer, reporter)
    if answer.get("failed"):
        raise answer.error()
    if json:
        reporter.emit_json(answer)


@_task(name="new", help={"name": "snake_case name of the migration"})
def datamig_new(c, name):
    """Create migrations/<UTC now>_<name>.py from the template (reaches no host)."""
    from .config import migrations_folder
    from .datamig.new import new_migration

    reporter = Reporter()
    try:
        path = new_migration(migrations_folder(c.config), name)
    except DeployToolsError as error:
        reporter.error(str(error))
        raise Exit(code=error.exit_code) from None
    reporter.note(f"created {path}")


# -- invoke's own configuration errors ----------------------------------------------------------


def _configuration_errors(previous: Callable[..., Any]) -> Callable[..., Any]:
    """invoke reads invoke.yaml and INVOKE_* variables before any task runs, and a bad file
    ends in a traceback there. Show it as the configuration error it is (exit 2), naming the
    key or the variable (and, with --json, as the one JSON object on stdout)."""

    def excepthook(kind: type[BaseException], error: BaseException, traceback: Any) -> None:
        names = {cls.__name__ for cls in kind.__mro__}
        if names & {"ValueError", "TypeError"} and _raised_in_invoke_config(traceback):
            names.add("UncastableEnvVar")  # invoke casting INVOKE_* text by a file's type
        if names & {"YAMLError", "UncastableEnvVar", "AmbiguousEnvVar", "AmbiguousMergeError"}:
            what = f"invalid invoke configuration: {_explain(kind, error, traceback)}"
            print(f"error: {what}", file=sys.stderr, flush=True)
            if "--json" in sys.argv:
                import json

                print(json.dumps({"status": "failed", "error": what}), flush=True)
            os._exit(2)
        previous(kind, error, traceback)

    return excepthook


def _explain(kind: type[BaseException], error: BaseException, traceback: Any) -> str:
    """What is wrong, read from the frames of invoke's merge or cast (their locals name the
    key, the variable and the file's value)."""
    frames = []
    while traceback is not None:
        frames.append(traceback.tb_frame.f_locals)
        traceback = traceback.tb_next
    if kind.__name__ == "AmbiguousMergeError":
        merges = [f for f in frames if "updates" in f and "key" in f]  # invoke's merge_dicts
        key = ".".join(str(f["key"]) for f in merges) or "a key"
        value = merges[-1].get("value") if merges else None
        if isinstance(value, dict):
            return f"{key} cannot be a mapping: write a value or a list (see the README)"
        return f"{key} must be a mapping of keys, not {type(value).__name__} {value!r}"
    variable = next((f["real_var"] for f in frames if isinstance(f.get("real_var"), str)), None)
    casting = next((f for f in frames if "old" in f and "new" in f), None)  # invoke's _cast
    if variable is None or casting is None:
        return str(error)
    old, text = casting["old"], casting["new"]
    if isinstance(old, list | tuple):
        return (
            f"{variable} cannot hold a list (a file sets that key to one): put the list in "
            "invoke.yaml or a file given with invoke -f FILE, or choose hosts with --hosts / "
            "--limit"
        )
    if isinstance(old, int):
        return (
            f"{variable}={text!r} is not a whole number, and a file sets that key to {old!r}, "
            f"so invoke needs one: change the variable, or write {float(old)!r} in the file"
        )
    return f"{variable}={text!r} does not fit the file's value {old!r}: {error}"


def _raised_in_invoke_config(traceback: Any) -> bool:
    frames = []
    while traceback is not None:
        frames.append(traceback.tb_frame.f_code.co_filename)
        traceback = traceback.tb_next
    return any(f.endswith(("invoke/env.py", "invoke/config.py")) for f in frames[-3:])


sys.excepthook = _configuration_errors(sys.excepthook)

lock = Collection("lock")
lock.add_task(lock_status, "status")
lock.add_task(lock_release, "release")

datamig = Collection("datamig")
datamig.add_task(datamig_status, "status")
datamig.add_task(datamig_apply, "apply")
datamig.add_task(datamig_new, "new")

ns = Collection(setup, deploy, rollback, restart, releases, lock, datamig)
ns.configure(invoke_defaults())
