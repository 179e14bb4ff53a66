"""``invoke deploy --dry-run``: what a deploy would do, found without changing anything.

The release is built locally (to know its id and migration files); every host's layout is
read (no lock is taken); the migration host's ledger is read with the runner's read-only
``status``. Pending migrations are the build's files whose version the ledger has not applied.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .admin import read_state
from .config import Settings
from .deploy.build import build_release
from .hosts import HostGroup
from .layout import HostState
from .output import Reporter
from .runner_client import run_runner

PHASES = ["build", "preflight", "upload", "switch", "migrate", "health", "finish"]


def plan(
    settings: Settings, *, ref: str = "HEAD", reporter: Reporter | None = None
) -> dict[str, Any]:
    """The deploy plan as a dict (printed as a table, or as JSON with --json)."""
    reporter = reporter or Reporter()
    with tempfile.TemporaryDirectory(prefix="deploytools-") as workdir:
        release = build_release(settings.repo, ref, settings.migrations_path, Path(workdir))
    with HostGroup(settings) as group:
        states: dict[str, HostState] = group.run("read", read_state)
        applied: set[str] = set()
        if release.migrations:
            migration_host = settings.migrate_on.name
            has_current = states[migration_host].current is not None
            answer = run_runner(
                group.transports[migration_host],
                settings,
                # without a current release, read the ledger alone: a folder with no files
                directory="current" if has_current else ".",
                command="status",
                args=[] if has_current else ["--path", "releases/.no-migrations"],
            )
            if answer.exit_code != 0 or answer.data is None:
                raise answer.error("reading the migration ledger")
            applied = {
                m["version"]
                for m in answer.data.get("migrations", [])
                if m.get("state") in ("applied", "changed", "missing")
            }
    phases = [
        phase
        for phase in PHASES
        if (phase != "migrate" or release.migrations) and (phase != "health" or settings.health_cmd)
    ]
    pending = [stem for stem in release.migrations if stem.split("_", 1)[0] not in applied]
    the_plan = {
        "release": release.id,
        "sha": release.sha,
        "ref": ref,
        "phases": phases,
        "migrate_on": settings.migrate_on.name if release.migrations else None,
        "pending_migrations": pending,
        "hosts": [
            {
                "host": name,
                "root": state.root,
                "current": state.current,
                "locked": state.locked,
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
            ["host", "root", "current", "lock"],
            [
                [h["host"], h["root"], h["current"], "HELD" if h["locked"] else "free"]
                for h in the_plan["hosts"]
            ],
        )
        reporter.note("pending migrations: " + (", ".join(pending) if pending else "none"))
        reporter.note("nothing was changed")
    return the_plan
