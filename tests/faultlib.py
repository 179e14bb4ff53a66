"""The fault suite's world and its one invariant check (``tests/test_faults.py``).

A ``World`` is three sshd hosts deploying one application whose ledger is on PostgreSQL (a user
with a password in ``DATABASE_URL``) with Redis beside it, and a ``*_TOKEN`` in the hosts'
``shared/.env``. Its migrations leave effects that can be counted (a row in ``fault_effects``
and a Redis counter, per version), and its hooks and migrations obey flag files in one
directory the hosts see (``World.flags``): ``hold-X`` makes X touch ``inside-X`` and wait for
``go-X``, ``fail-X`` makes X fail. So a test strikes at an exact point, never after a sleep.

``check`` is the one invariant check every fault ends with (see its docstring).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import servers
import sqlalchemy as sa
from fleet import Fleet

PASSWORD = "pw-Fault5-q7Zr2x"  # in DATABASE_URL: must never be shown or stored
TOKEN = "tok-Fault5-9hTd3Kw1"  # API_TOKEN in shared/.env: the same

# A migration whose effect is visible: a row of its own in fault_effects and a Redis counter
# (INCR: applied twice would show 2). The Redis write comes last, just before the runner
# commits, so a run stopped while it waits leaves neither.
MIGRATION = '''"""{name}: leaves a row in fault_effects and a Redis counter."""
import os
import pathlib
import time

import sys

import sqlalchemy as sa

VERSION = "{version}"
phase = "{phase}"

_flags = pathlib.Path(os.environ.get("FAULT_FLAGS", "/nonexistent"))
_checking = "check" in sys.argv or "session" in sys.argv  # a deploy's runner checks first
if _checking and (_flags / "hold-check").exists():  # the check step imports us
    (_flags / "inside-check").touch()
    _deadline = time.monotonic() + 60
    while not (_flags / "go-check").exists() and time.monotonic() < _deadline:
        time.sleep(0.02)


def run(ctx):
    flags = pathlib.Path(os.environ["FAULT_FLAGS"])
    if (flags / f"hold-{{VERSION}}").exists():
        (flags / f"inside-{{VERSION}}").touch()
        deadline = time.monotonic() + 60
        while not (flags / f"go-{{VERSION}}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    if (flags / f"fail-{{VERSION}}").exists():
        raise RuntimeError(
            f"{{VERSION}} failed on purpose (database {{os.environ['DATABASE_URL']}}, "
            f"token {{os.environ['API_TOKEN']}})"
        )
    ctx.db.execute(
        sa.text("INSERT INTO fault_effects (version, release) VALUES (:v, :r)"),
        {{"v": VERSION, "r": ctx.release}},
    )
    ctx.redis.incr(f"fault_effect:{{VERSION}}")
'''


def hook(name: str, then: str = "") -> str:
    """A hook command obeying ``hold-NAME`` / ``fail-NAME`` (or ``….hostN``, one host only)."""
    flags = '"$FAULT_FLAGS"'
    return (
        'h=$(basename "$(dirname "$DEPLOY_ROOT")"); '
        f'if [ -e {flags}/hold-{name} ] || [ -e {flags}/hold-{name}."$h" ]; then '
        f'touch {flags}/inside-{name}."$h"; n=0; '
        f'while [ ! -e {flags}/go-{name} ] && [ "$n" -lt 600 ]; do sleep 0.1; n=$((n+1)); done; '
        "fi; "
        f'if [ -e {flags}/fail-{name} ] || [ -e {flags}/fail-{name}."$h" ]; then '
        f'echo "{name} failed on purpose on $h" >&2; exit 1; fi' + (f"; {then}" if then else "")
    )


#: restart records which release serves; health checks that the one in `current` does
RESTART = hook("restart", 'echo "$DEPLOY_RELEASE" > "$DEPLOY_SHARED/serving"')
HEALTH = [
    "test ! -e sick",  # a release holding a file `sick` never passes
    'test "$(cat "$DEPLOY_SHARED/serving" 2>/dev/null)" = "$DEPLOY_RELEASE"',
]
DEPLOY_CONFIG: dict[str, Any] = {
    "before_switch": [hook("before_switch")],
    "restart": [RESTART],
    "health": HEALTH,
    "health_timeout": 1,
    "command_timeout": 60,
}


@dataclass
class Run:
    """One command of a case: what it printed and how it ended."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.stdout) if self.stdout.strip() else None
        except ValueError:
            return None


@dataclass
class World:
    """The fleet of the fault suite and everything its invariants read."""

    fleet: Fleet
    cluster: Any  # servers.SSHCluster
    directory: Path
    pg_url: str | None  # None: an application without migrations
    redis_url: str | None
    flags: Path
    migrations: dict[str, str] = field(default_factory=dict)  # version -> name
    phases: dict[str, str] = field(default_factory=dict)  # version -> phase
    trees: dict[str, list[str]] = field(default_factory=dict)  # release -> its versions
    config: dict[str, Any] = field(default_factory=dict)  # deploy keys of every command
    _next: int = 0

    # -- the application -------------------------------------------------------------------

    def add_migrations(self, *phases: str) -> list[str]:
        """Commit one migration per phase given (``after_switch`` by default); returns their
        versions, in order."""
        files: dict[str, str | None] = {}
        versions = []
        for phase in phases or ("after_switch",):
            self._next += 1
            version = f"2030{self._next:08d}"
            name = f"effect_{self._next}"
            self.migrations[version] = name
            self.phases[version] = phase
            files[f"migrations/{version}_{name}.py"] = MIGRATION.format(
                version=version, name=name, phase=phase
            )
            versions.append(version)
        self.fleet.repo.commit(files, f"migrations {', '.join(versions)}")
        return versions

    def label(self, version: str) -> str:
        return f"{version}_{self.migrations[version]}"

    def flag(self, name: str) -> Path:
        path = self.flags / name
        path.touch()
        return path

    def clear_flags(self) -> None:
        for path in self.flags.iterdir():
            path.unlink()

    # -- commands ------------------------------------------------------------------------------

    def invoke(self, *args: str, env: dict[str, str] | None = None, **deploy: Any) -> Run:
        config = {**DEPLOY_CONFIG, **self.config, **deploy}
        completed = self.fleet.invoke(*args, env=env, timeout=180, **config)
        return Run(args, completed.returncode, completed.stdout, completed.stderr)

    def start(self, *args: str, env: dict[str, str] | None = None, **deploy: Any):
        return self.fleet.start_invoke(*args, env=env, **{**DEPLOY_CONFIG, **self.config, **deploy})

    def deploy(self, *args: str, env: dict[str, str] | None = None, **deploy: Any) -> Run:
        run = self.invoke("deploy", "--json", *args, env=env, **deploy)
        self._remember(run.report)
        return run

    def _remember(self, report: dict[str, Any] | None) -> None:
        if report and report.get("release"):
            self.trees.setdefault(report["release"], self.versions_in_head())

    def versions_in_head(self) -> list[str]:
        tree = self.fleet.repo.git("ls-tree", "--name-only", "HEAD", "migrations/")
        return sorted(Path(line).name.split("_", 1)[0] for line in tree.splitlines() if line)

    def finish(self, process: subprocess.Popen, timeout: float = 120) -> Run:
        """Wait for a started command; its Run."""
        stdout, stderr = process.communicate(timeout=timeout)
        run = Run(tuple(process.args[3:]), process.returncode, stdout, stderr)
        self._remember(run.report)
        return run

    def wait_for(self, path: Path, process: subprocess.Popen | None, timeout: float = 60) -> None:
        """Until ``path`` exists (a marker a hook, a migration or the upload leaves)."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if process is not None and process.poll() is not None:
                raise AssertionError(f"{path.name} never appeared: {process.communicate()}")
            assert time.monotonic() < deadline, f"{path.name} never appeared"
            time.sleep(0.01)

    def wait_for_glob(
        self, directory: Path, pattern: str, process: subprocess.Popen, timeout: float = 60
    ) -> Path:
        """Until a file matching ``pattern`` appears in ``directory``; returns it."""
        deadline = time.monotonic() + timeout
        while not (found := list(directory.glob(pattern))):
            if process.poll() is not None:
                raise AssertionError(f"no {pattern} appeared: {process.communicate()}")
            assert time.monotonic() < deadline, f"no {pattern} appeared in {directory}"
            time.sleep(0.005)
        return found[0]

    # -- reading the hosts and the ledger -------------------------------------------------------

    def owner(self, host: str) -> dict[str, Any] | None:
        path = self.fleet.root(host) / "deploy.lock" / "owner.json"
        return json.loads(path.read_text()) if path.exists() else None

    def ledger(self) -> dict[str, str]:
        """Applied migrations: version -> the release that applied it."""
        return dict(self._query("SELECT version, release FROM data_migrations", ledger=True))

    def effects(self) -> Counter:
        if not self.migrations:
            return Counter()
        return Counter(v for (v,) in self._query("SELECT version FROM fault_effects"))

    def attempt_errors(self) -> list[str]:
        return [e for (e,) in self._query("SELECT error FROM data_migration_attempts", True) if e]

    def redis_counts(self) -> dict[str, int]:
        if self.redis_url is None:
            return {}
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            return {
                key.split(":", 1)[1]: int(client.get(key) or 0)
                for key in client.scan_iter("fault_effect:*")
            }
        finally:
            client.close()

    def _query(self, sql: str, ledger: bool = False) -> list[tuple]:
        if self.pg_url is None:
            return []
        engine = sa.create_engine(self.pg_url)
        try:
            with engine.connect() as db:
                if ledger and not sa.inspect(db).has_table("data_migrations"):
                    return []
                return [tuple(row) for row in db.execute(sa.text(sql))]
        finally:
            engine.dispose()

    def leftover_processes(self) -> list[tuple[int, str]]:
        """Processes working in the hosts' roots: runners, hooks, restarts left running."""
        return servers.processes_using(self.directory)

    def release_stuck(self) -> None:
        """Let every held hook and migration go on (and end): a case's last step."""
        for name in [p.name for p in self.flags.iterdir() if p.name.startswith("inside-")]:
            what = name.removeprefix("inside-").split(".")[0]
            (self.flags / f"go-{what}").touch()
        deadline = time.monotonic() + 30
        while self.leftover_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        servers.signal_all([pid for pid, _ in self.leftover_processes()], signal.SIGKILL)
        self.clear_flags()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(
    world: World,
    runs: list[Run],
    *,
    release: str | None,
    exit4: bool = False,
) -> dict[str, str | None]:
    """The invariants that hold after every fault (once the last of ``runs`` has run):

    1. ``current`` on every host points to a complete release whose files match its manifest,
       and that release is the one serving (``restart`` records it);
    2. the hosts agree on ``current`` (after exit 4: the hosts that differ are named);
    3. each migration's ledger row and its effects agree: applied ⇔ one row in fault_effects
       and a Redis counter of 1, never twice;
    4. if the faulted deploy's ``release`` is not live, the migrations it committed are named
       in the output of the command that put the hosts back, its ``--json`` ``stayed_applied``
       and its revision line; if it is live, every migration it brought (but after_restart
       ones) is applied;
    5. no deploy lock is left (but after exit 4), no runner pid, no process of the deploy
       running on the hosts;
    6. neither the database password nor the token is in any output, host file or the ledger.

    Returns ``current`` per host."""
    fleet = world.fleet
    currents = fleet.currents()
    output = "\n".join(run.stdout + run.stderr for run in runs)

    # 1. complete releases
    for host, current in currents.items():
        if current is None:
            continue  # never deployed yet
        directory = fleet.root(host) / "releases" / current
        manifest = json.loads((directory / ".release.json").read_text())
        assert manifest["id"] == current
        for entry in manifest["files"]:
            assert sha256(directory / entry["path"]) == entry["sha256"], (host, entry["path"])
        for entry in manifest["links"]:
            assert os.readlink(directory / entry["path"]) == entry["target"], (host, entry)

    # 1b. the code serving is the code in `current` (restart records it, health checks it)
    for host, current in currents.items():
        serving = fleet.root(host) / "shared" / "serving"
        if current is not None and not exit4:
            assert serving.read_text().strip() == current, (host, "serves another release")

    # 2. agreement
    live = Counter(currents.values()).most_common(1)[0][0]
    differing = [host for host, current in currents.items() if current != live]
    if exit4:
        assert runs[-1].code == 4 or any(run.code == 4 for run in runs), [r.code for r in runs]
        for host in differing:
            assert host in output, f"{host} is not on {live} and was not named"
    else:
        assert not differing, currents

    # 3. ledger and effects
    applied = world.ledger()
    effects = world.effects()
    counts = world.redis_counts()
    assert set(effects) <= set(world.migrations) and set(counts) <= set(world.migrations)
    for version in world.migrations:
        expected = 1 if version in applied else 0
        assert effects[version] == expected, (version, effects[version], applied)
        assert counts.get(version, 0) == expected, (version, counts.get(version), applied)

    # 4. committed migrations of a deploy whose code went back are named; live code has its
    if release is not None and not exit4:
        stayed = sorted(world.label(v) for v, by in applied.items() if by == release)
        # the faulted command itself, unless it was killed: then the next one recovered
        settled = next(run for run in runs if run.code != -9)
        recovered = (settled.report or {}).get("recovered")
        went_back = live != release if recovered is None else not recovered["kept"]
        if went_back and stayed:
            if recovered is not None:
                assert sorted(recovered["stayed_applied"]) == stayed, recovered
            for label in stayed:
                assert label in settled.stderr, (label, settled.stderr)
            if settled.report is not None and settled.report.get("release") == release:
                assert sorted(settled.report["stayed_applied"]) == stayed, settled.report
            for host in fleet.names:
                lines = [r for r in fleet.revisions(host) if r["release"] == release]
                assert lines, f"no revision line for {release} on {host}"
                last = lines[-1]
                named = json.dumps(last.get("stayed_applied") or []) + (last["error"] or "")
                for label in stayed:
                    assert label in named, (host, label, last)
        if not went_back:
            brought = world.trees.get(release, [])
            missing = [
                v for v in brought if v not in applied and world.phases[v] != "after_restart"
            ]
            assert not missing, f"{release} is live without its migrations {missing}"

    # 5. locks and processes
    for host in fleet.names:
        lock = fleet.root(host) / "deploy.lock"
        if not exit4:
            assert not lock.exists(), (host, world.owner(host))
        assert not (lock / "runner.pid").exists() or exit4, host
    assert world.leftover_processes() == []

    # 6. secrets: outputs (--json included), the ledger's errors, every file the deploy wrote
    errors = "\n".join(world.attempt_errors())
    for secret in (PASSWORD, TOKEN):
        assert secret not in output and secret not in errors
    for host in fleet.names:
        root = fleet.root(host)
        for path in root.rglob("*"):
            if path.name == ".env" or path.is_symlink() or not path.is_file():
                continue
            if path.is_relative_to(root / "shared" / "venvs"):
                continue  # installed packages
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                assert PASSWORD.encode() not in data and TOKEN.encode() not in data, path
    return currents
