"""Code and data always agree, whatever is interrupted (DESIGN §3: "Migrations that committed
stay committed", "Interruptions", "Time limits").

Every case strikes a real deploy to three sshd hosts (ledger on PostgreSQL, Redis beside it) at
an exact point, through the fault hook (``DEPLOYTOOLS_FAULT``) or a flag a hook or migration
waits on, lets "the next command" run where the contract needs one, and ends with the same
invariant check (``faultlib.check``). The cases share one fleet, one ledger and one history:
each starts from where the last one left the hosts, which is itself what the invariants
promise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis
import servers
import sqlalchemy as sa
from fleet import AppRepo, Fleet

from deploytools.admin import setup
from deploytools.lock import LockOwner

pytest.register_assert_rewrite("faultlib")
from faultlib import PASSWORD, TOKEN, Run, World, check  # noqa: E402


@pytest.fixture(scope="module")
def world(ssh_cluster, postgres_server, redis_server):
    """Three hosts with one good release live, the ledger on PostgreSQL as a user with a
    password, Redis db 15, and the secrets in every host's shared/.env."""
    directory = Path(tempfile.mkdtemp(prefix="deploytools-faults-"))
    directory.chmod(0o755)
    repo = AppRepo(directory / "app")
    repo.commit({"static.txt": "never changes\n", ".gitignore": "invoke.yaml\n"}, "static file")
    roots = {
        host.spec: directory / f"host{index}" / "app"
        for index, host in enumerate(ssh_cluster.hosts, start=1)
    }
    fleet = Fleet(
        kind="ssh",
        entries=[
            {"host": name, "root": str(root), "python": sys.executable}
            for name, root in roots.items()
        ],
        roots=roots,
        repo=repo,
        known_hosts=ssh_cluster.known_hosts,
        identity_file=ssh_cluster.client_key,
    )
    setup(fleet.settings())

    with psycopg.connect(
        host="127.0.0.1",
        port=postgres_server.port,
        user="postgres",
        dbname="postgres",
        autocommit=True,
    ) as admin:
        admin.execute(f"CREATE ROLE faults LOGIN PASSWORD '{PASSWORD}'")
        admin.execute("CREATE DATABASE faults OWNER faults")
    pg_url = f"postgresql+psycopg://faults:{PASSWORD}@127.0.0.1:{postgres_server.port}/faults"
    engine = sa.create_engine(pg_url)
    with engine.begin() as db:
        db.execute(sa.text("CREATE TABLE fault_effects (version text, release text)"))
    engine.dispose()
    redis_url = redis_server.url(15)
    redis.Redis.from_url(redis_url).flushdb()

    flags = directory / "flags"
    flags.mkdir(mode=0o777)
    for root in roots.values():
        (root / "shared" / ".env").write_text(
            f"DATABASE_URL={pg_url}\nREDIS_URL={redis_url}\nAPI_TOKEN={TOKEN}\n"
            f"FAULT_FLAGS={flags}\n"
        )
    world = World(fleet, ssh_cluster, directory, pg_url, redis_url, flags)
    world.add_migrations()
    first = world.deploy()
    assert first.code == 0, first.stderr
    check(world, [first], release=first.report["release"])
    try:
        yield world
    finally:
        world.release_stuck()
        servers.remove_tree(directory)


@pytest.fixture(autouse=True)
def settled(world):
    """Whatever a failing case left (a waiting hook, a lock), the next case starts clean."""
    yield
    if world.leftover_processes() or any(world.fleet.locked(h) for h in world.fleet.names):
        world.release_stuck()
        world.invoke("lock.release")
    world.clear_flags()


def new_release(world: World, *phases: str) -> list[str]:
    """A new commit with one migration per phase (after_switch by default)."""
    world.fleet.repo.bump()
    return world.add_migrations(*phases)


def fault_env(tmp_path: Path, fault: str | None = None) -> dict[str, str]:
    """A killed process cannot remove its temp dir: keep it in the test's own."""
    env = {"TMPDIR": str(tmp_path)}
    if fault:
        env["DEPLOYTOOLS_FAULT"] = fault
    return env


def deploying(world: World) -> str | None:
    """The release the deploy holding the migration host's lock was deploying."""
    owner = world.owner(world.fleet.names[0])
    if owner is None:
        return None
    world.trees.setdefault(owner["release"], world.versions_in_head())
    return owner["release"]


def kill_while_held(
    world: World, hold: str, tmp_path: Path, inside: str = ""
) -> tuple[Run, str | None]:
    """Deploy until a hook, migration or installer waits on the flag ``hold-HOLD`` (it says so
    with ``inside-INSIDE``, by default ``inside-HOLD``), then SIGKILL the deployer there:
    the killed run and the release it was deploying."""
    world.flag(f"hold-{hold}")
    process = world.start("deploy", "--json", env=fault_env(tmp_path))
    world.wait_for(world.flags / f"inside-{inside or hold}", process)
    process.kill()
    return world.finish(process), deploying(world)


def next_command(world: World, command: str) -> Run:
    """What settles a killed deploy: ``lock.release``, or the next deploy (a new commit) that
    recovers first and says so."""
    if command == "lock.release":
        run = world.invoke("lock.release")
        assert run.code == 0, run.stderr
        return run
    world.fleet.repo.bump()
    run = world.deploy()
    assert run.code == 0, run.stderr
    assert run.report["recovered"] is not None and "no longer running" in run.stderr
    return run


# -- SIGKILL of the deploying process ------------------------------------------------------------

PHASES = [
    "preflight",
    "upload",
    "environment",
    "check",
    "before_switch",
    "switch",
    "migrate",
    "restart",
]
MIGRATIONS_FOR = {  # the migrations that make a point interesting (default: one after_switch)
    "check": ("before_switch", "after_switch"),
    "before_switch": ("before_switch", "after_switch"),
    "after_restart": ("after_switch", "after_restart"),
    "finish": ("after_switch", "after_restart"),
}
PHASE_POINTS = [f"{when}:{phase}" for phase in PHASES for when in ("before", "after")] + [
    "before:after_restart",
    "before:finish",
]
#: where the next deploy recovers (at the "before:" points, lock.release does)
DEPLOY_RECOVERS = {point for point in PHASE_POINTS if point.startswith("after:")}
#: where the release is kept: it got through migrate with every migration applied
#: (after_restart ones aside: they run once it serves, and are then reported)
KEPT = {"after:migrate", "before:restart", "after:restart", "before:after_restart", "before:finish"}


@pytest.mark.parametrize("point", PHASE_POINTS)
def test_sigkill_at_a_phase(world, point, tmp_path):
    new_release(world, *MIGRATIONS_FOR.get(point.split(":")[1], ()))
    killed = world.deploy(env=fault_env(tmp_path, point))
    assert killed.code == -9, killed.stderr
    release = deploying(world)
    status = world.invoke("lock.status", "--json")
    records = [h["lock"] for h in json.loads(status.stdout)["hosts"] if h["lock"]]
    assert {r["alive"] for r in records} == ({"dead"} if release else set()), status.stdout
    command = "deploy" if point in DEPLOY_RECOVERS else "lock.release"
    after = next_command(world, command)
    currents = check(world, [killed, after, status], release=release)
    if release is None:
        return
    if command == "deploy":
        assert after.report["recovered"]["kept"] == (point in KEPT), after.report["recovered"]
    else:
        assert (set(currents.values()) == {release}) == (point in KEPT), (point, currents)
    if point == "before:after_restart":
        assert "were not applied" in after.stderr and "datamig.apply" in after.stderr


UNDO_POINTS = [
    ("undo:abort", "before_switch"),
    ("undo:switch back", "health"),
    ("undo:restart", "health"),
    ("undo:log and unlock", "health"),
    ("undo:switch back", "migration"),
    ("undo:log and unlock", "migration"),
]


@pytest.mark.parametrize(("point", "failure"), UNDO_POINTS)
def test_sigkill_in_the_undo(world, point, failure, tmp_path):
    versions = new_release(world, "after_switch", "after_switch")
    if failure == "before_switch":  # before the switch: a before_switch hook fails on one host
        world.flag("fail-before_switch.host2")
    elif failure == "health":  # after the switch and the restart: health fails everywhere
        world.fleet.repo.commit({"sick": "yes\n"}, "a release that never gets healthy")
    else:  # after the switch: the second migration fails (the first stays applied)
        world.flag(f"fail-{versions[1]}")
    killed = world.deploy(env=fault_env(tmp_path, point))
    assert killed.code == -9, killed.stderr
    release = deploying(world)
    world.clear_flags()
    if failure == "health":
        world.fleet.repo.commit({"sick": None}, "healthy again")
    after = next_command(world, "lock.release")
    currents = check(world, [killed, after], release=release)
    assert release not in currents.values()
    if failure == "migration":
        assert versions[0] in world.ledger() and versions[1] not in world.ledger()


def test_sigkill_inside_the_check_step(world, tmp_path):
    new_release(world)
    killed, release = kill_while_held(world, "check", tmp_path)
    world.clear_flags()
    after = next_command(world, "lock.release")  # stops the check the dead deploy left
    check(world, [killed, after], release=release)


def test_sigkill_inside_a_before_switch_migration(world, tmp_path):
    versions = new_release(world, "before_switch", "after_switch")
    killed, release = kill_while_held(world, versions[0], tmp_path)
    after = next_command(world, "lock.release")  # stops the runner: the migration rolls back
    currents = check(world, [killed, after], release=release)
    assert release not in currents.values()
    assert not set(versions) & set(world.ledger())


def test_sigkill_inside_the_second_migration(world, tmp_path):
    versions = new_release(world, "after_switch", "after_switch")
    killed, release = kill_while_held(world, versions[1], tmp_path)
    after = next_command(world, "lock.release")
    currents = check(world, [killed, after], release=release)
    # the hosts went back; the first migration committed and is named as staying applied
    assert release not in currents.values()
    assert world.ledger().get(versions[0]) == release and versions[1] not in world.ledger()
    assert world.label(versions[0]) in after.stderr


def test_sigkill_inside_an_after_restart_migration(world, tmp_path):
    versions = new_release(world, "after_switch", "after_restart")
    killed, release = kill_while_held(world, versions[1], tmp_path)
    world.clear_flags()
    after = next_command(world, "deploy")
    check(world, [killed, after], release=release)
    assert set(world.ledger()) >= set(versions)  # the next deploy applied what was left


@pytest.mark.parametrize("hook", ["before_switch", "restart"])
def test_sigkill_inside_a_hook(world, hook, tmp_path):
    new_release(world)
    killed, release = kill_while_held(world, f"{hook}.host2", tmp_path)
    world.clear_flags()  # the next command's own hooks must not wait
    after = next_command(world, "lock.release")
    check(world, [killed, after], release=release)


def test_sigkill_during_the_upload(world, tmp_path):
    new_release(world)
    world.fleet.repo.commit({"blob.bin": os.urandom(4 << 20).hex()}, "a large file")
    process = world.start("deploy", "--json", env=fault_env(tmp_path))
    releases = world.fleet.root(world.fleet.names[1]) / "releases"
    world.wait_for_glob(releases, ".partial-*.archive", process)
    process.kill()
    killed = world.finish(process)
    release = deploying(world)
    after = next_command(world, "lock.release")
    check(world, [killed, after], release=release)
    for host in world.fleet.names:
        assert not list((world.fleet.root(host) / "releases").glob(".partial-*"))


# -- the environment phase ------------------------------------------------------------------------

SLOW_VENV_PYTHON = """#!/bin/sh
# deploy.venv_python: "-m venv DIR" waits while hold-venv (or hold-venv.hostN) exists
if [ "$1" = -m ] && [ "$2" = venv ]; then
  case $3 in */host1/*) h=host1 ;; */host2/*) h=host2 ;; *) h=host3 ;; esac
  if [ -e {flags}/hold-venv ] || [ -e {flags}/hold-venv.$h ]; then
    touch {flags}/inside-venv.$h
    n=0
    while [ ! -e {flags}/go-venv ] && [ "$n" -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
  fi
fi
exec /usr/bin/python3 "$@"
"""


@pytest.fixture
def env_world(ssh_fleet, ssh_cluster, wheelhouse, deploy_dir):
    """The three hosts deploying an application with a lock file (no migrations), whose
    environments are built from a venv_python that can be held mid-build."""
    flags = deploy_dir / "flags"
    flags.mkdir(mode=0o777)
    python = deploy_dir / "slow-python"
    python.write_text(SLOW_VENV_PYTHON.format(flags=flags))
    python.chmod(0o755)
    for root in ssh_fleet.roots.values():
        (root / "shared" / ".env").write_text(f"API_TOKEN={TOKEN}\nFAULT_FLAGS={flags}\n")
    ssh_fleet.repo.commit(
        {"requirements.txt": "tinyapp-dep==1.0\n", ".gitignore": "invoke.yaml\n"}, "a lock file"
    )
    world = World(ssh_fleet, ssh_cluster, deploy_dir, None, None, flags)
    world.config = {
        "venv_python": str(python),
        "installer": "pip",
        "install_args": ["--no-index", "--find-links", str(wheelhouse)],
    }
    first = world.deploy()
    assert first.code == 0, first.stderr
    yield world
    world.release_stuck()


def test_faults_while_the_environment_builds(env_world, tmp_path):
    """SIGKILL and a lost connection while the installer runs: recovery (or the undo) stops
    the installer, and the next deploy builds the environment whole."""
    world, fleet = env_world, env_world.fleet
    fleet.repo.commit({"requirements.txt": "tinyapp-dep==2.0\n"}, "a new lock file")
    killed, release = kill_while_held(world, "venv", tmp_path, inside="venv.host1")
    world.clear_flags()
    after = next_command(world, "lock.release")
    check(world, [killed, after], release=release)  # the held installers were stopped

    fleet.repo.bump()
    world.flag("hold-venv.host2")
    process = world.start("deploy", "--json", env=fault_env(tmp_path))
    world.wait_for(world.flags / "inside-venv.host2", process)
    assert world.cluster.hosts[1].kill_sessions()
    cut = world.finish(process)
    assert cut.code == 1 and fleet.names[1] in cut.report["error"], cut.stderr
    check(world, [cut], release=cut.report["release"])
    world.clear_flags()

    fleet.repo.bump()
    run = world.deploy()
    assert run.code == 0, run.stderr
    check(world, [run], release=run.report["release"])
    for host in fleet.names:  # incomplete environments were removed; the live one is whole
        venvs = sorted((fleet.root(host) / "shared" / "venvs").iterdir())
        assert venvs and all((venv / ".complete").exists() for venv in venvs), (host, venvs)
        live = fleet.root(host) / "current" / ".venv"
        assert (live / ".complete").exists() and (live / "bin" / "tinyapp-hello").exists()


# -- a lost connection ---------------------------------------------------------------------------

LOST = [
    # (command whose answer is lost, the failure that makes it run, exit code)
    ("preflight", None, 1),  # the lock was taken, the answer lost: the deploy fails, unlocks
    ("switch", None, 1),  # switched, answer lost: the undo switches every host back
    ("finish", None, 0),  # retried on a new connection: logged once, unlocked
    ("abort", "before_switch", 1),  # the undo's own commands are retried once
    ("switch back", "migration", 1),
    ("log and unlock", "migration", 1),
    ("upload", "repair", 1),  # the second round of an upload whose reused file did not verify
]


@pytest.mark.parametrize(("command", "failure", "code"), LOST, ids=[c for c, _, _ in LOST])
def test_a_lost_connection(world, command, failure, code, tmp_path):
    versions = new_release(world, "after_switch", "after_switch")
    static = None
    if failure == "before_switch":
        world.flag("fail-before_switch.host2")
    elif failure == "migration":
        world.flag(f"fail-{versions[1]}")
    elif failure == "repair":  # a file of the live release edited in place on the first host
        host = world.fleet.names[0]
        static = world.fleet.root(host) / "releases" / world.fleet.current(host) / "static.txt"
        static.write_text("edited on the host\n")
    try:
        run = world.deploy(env=fault_env(tmp_path, f"lost:{command}"))
    finally:
        if static is not None:
            static.write_text("never changes\n")  # the same inode: every release sharing it
    assert run.code == code, run.stderr
    release = run.report["release"]
    currents = check(world, [run], release=release)
    assert (set(currents.values()) == {release}) == (code == 0)
    if failure == "migration":  # the first committed: named (check compares with the ledger)
        assert world.label(versions[0]) in run.report["stayed_applied"]
    switched = command not in ("preflight", "abort", "upload")  # failed before the switch
    for host in world.fleet.names:  # logged once (a retried command too), if switched at all
        lines = [r for r in world.fleet.revisions(host) if r["release"] == release]
        assert len(lines) == switched, (host, lines)


@pytest.mark.parametrize("where", ["check", "migrate", "after_restart"])
def test_sessions_cut_while_a_migration_runs(world, where, tmp_path):
    """The runner outlives its connection: the deploy waits for it over a new one, then the
    ledger decides; every migration applied, the new code stays."""
    phases = {
        "check": ("before_switch", "after_switch"),
        "migrate": ("after_switch", "after_switch"),
        "after_restart": ("after_switch", "after_restart"),
    }[where]
    versions = new_release(world, *phases)
    held = versions[0] if where == "check" else versions[1]
    world.flag(f"hold-{held}")
    process = world.start("deploy", "--json", env=fault_env(tmp_path))
    world.wait_for(world.flags / f"inside-{held}", process)
    assert world.cluster.hosts[0].kill_sessions()
    world.flag(f"go-{held}")
    run = world.finish(process)
    assert run.code == 0, run.stderr
    assert "lost while migrations ran" in run.stderr
    currents = check(world, [run], release=run.report["release"])
    assert set(currents.values()) == {run.report["release"]}
    assert set(versions) <= set(world.ledger())


@pytest.mark.parametrize("where", ["upload", "before_switch", "restart"])
def test_sessions_cut_on_one_host(world, where, tmp_path):
    """The second host's connection dies mid-phase: the deploy fails there and undoes
    everywhere; what that host still ran is stopped."""
    new_release(world)
    host = world.fleet.names[1]
    if where == "upload":
        world.fleet.repo.commit({"blob.bin": os.urandom(4 << 20).hex()}, "a large file")
    else:
        world.flag(f"hold-{where}.host2")
    process = world.start("deploy", "--json", env=fault_env(tmp_path))
    if where == "upload":
        releases = world.fleet.root(host) / "releases"
        world.wait_for_glob(releases, ".partial-*.archive", process)
    else:
        world.wait_for(world.flags / f"inside-{where}.host2", process)
        (world.flags / f"hold-{where}.host2").unlink()  # the undo's own restart must not wait
    assert world.cluster.hosts[1].kill_sessions()
    run = world.finish(process)
    assert run.code == 1, run.stderr
    assert host in run.report["error"]
    currents = check(world, [run], release=run.report["release"])
    assert run.report["release"] not in currents.values()


# -- SIGTERM and Ctrl-C --------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("where", ["upload", "check", "migrate", "undo"])
def test_sigterm_and_ctrl_c(world, signum, where, tmp_path):
    """Like any failure: the undo runs (it cannot be cut short), exit 1; in migrate the
    runner is stopped first and the ledger decides what stayed applied."""
    versions = new_release(world, "after_switch", "after_switch")
    env = fault_env(tmp_path)
    if where == "undo":
        world.flag(f"fail-{versions[1]}")
        env["DEPLOYTOOLS_FAULT"] = f"undo:switch back:{signal.Signals(signum).name}"
    elif where == "migrate":
        world.flag(f"hold-{versions[1]}")
    elif where == "check":  # the runner's check imports the migrations, and waits there
        world.flag("hold-check")
    else:
        world.fleet.repo.commit({"blob.bin": os.urandom(4 << 20).hex()}, "a large file")
    process = world.start("deploy", "--json", env=env)
    if where in ("migrate", "check"):
        world.wait_for(
            world.flags / ("inside-check" if where == "check" else f"inside-{versions[1]}"), process
        )
        process.send_signal(signum)
    elif where == "upload":
        releases = world.fleet.root(world.fleet.names[1]) / "releases"
        world.wait_for_glob(releases, ".partial-*.archive", process)
        process.send_signal(signum)
    run = world.finish(process)
    assert run.code == 1, run.stderr
    release = run.report["release"]
    currents = check(world, [run], release=release)
    assert release not in currents.values()
    if where == "undo":
        assert "putting the hosts back first" in run.stderr
        assert run.report["status"] == "rolled_back"
    if where == "migrate":
        assert "interrupted" in run.report["error"]
        assert world.ledger().get(versions[0]) == release and versions[1] not in world.ledger()
        assert world.label(versions[0]) in run.report["stayed_applied"]


# -- a host that stops answering ----------------------------------------------------------------


@pytest.mark.parametrize("where", ["before_switch", "migrate"])
def test_a_stopped_host(world, where, tmp_path):
    """SIGSTOP of a host's sessions mid-phase: keepalives find it, the phase fails there and
    the deploy undoes; the host is continued afterwards."""
    versions = new_release(world, "after_switch", "after_switch")
    index = 0 if where == "migrate" else 1
    held = versions[1] if where == "migrate" else "before_switch.host2"
    world.flag(f"hold-{held}")
    process = world.start(
        "deploy", "--json", env=fault_env(tmp_path), keepalive=1, datamig={"timeout": 5}
    )
    world.wait_for(world.flags / f"inside-{held}", process)
    host = world.cluster.hosts[index]
    host.stop_session()
    try:
        run = world.finish(process)
    finally:
        host.continue_session()
    assert run.code == 1, run.stderr
    currents = check(world, [run], release=run.report["release"])
    assert run.report["release"] not in currents.values()
    if where == "migrate":
        assert world.ledger().get(versions[0]) == run.report["release"]
        assert versions[1] not in world.ledger()


def test_an_unreachable_migration_host_during_migrate_needs_a_person(world, tmp_path):
    """The migration host's sessions die and it takes no new connection: whether the runner
    still commits cannot be known, so nothing is switched back: exit 4 names the host and
    keeps the locks. Once it answers again, lock.release settles it from the ledger."""
    versions = new_release(world, "after_switch", "after_switch")
    world.flag(f"hold-{versions[1]}")
    process = world.start("deploy", "--json", env=fault_env(tmp_path), connect_timeout=2)
    world.wait_for(world.flags / f"inside-{versions[1]}", process)
    host = world.cluster.hosts[0]
    os.kill(host.process.pid, signal.SIGSTOP)  # the listener: new connections get no banner
    try:
        assert host.kill_sessions()
        run = world.finish(process)
    finally:
        os.kill(host.process.pid, signal.SIGCONT)
    assert run.code == 4, run.stderr
    assert world.fleet.names[0] in run.stderr and "datamig.status" in run.stderr
    assert all(world.fleet.locked(name) for name in world.fleet.names)
    release = run.report["release"]
    world.flag(f"go-{versions[1]}")  # the runner there goes on, and commits
    deadline = time.monotonic() + 60
    while world.leftover_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    check(world, [run], release=release, exit4=True)
    after = next_command(world, "lock.release")
    currents = check(world, [run, after], release=release)
    assert set(currents.values()) == {release}  # every migration committed: the code stays
    assert set(versions) <= set(world.ledger())


# -- many at once --------------------------------------------------------------------------------


def test_a_lock_being_taken_is_refused_naming_its_owner(world, tmp_path):
    """A deploy that finds deploy.lock made but owner.json not yet written (the moment
    between the two in another deploy's preflight) waits for it and names that owner."""
    new_release(world)
    lock = world.fleet.root(world.fleet.names[0]) / "deploy.lock"
    lock.mkdir()
    owner = LockOwner.mine("20300101000000-0000000")  # this process: alive

    def write_owner() -> None:
        (lock / "token").write_text(owner.token + "\n")
        (lock / "owner.json").write_text(owner.to_json() + "\n")

    writer = threading.Timer(1.5, write_owner)
    writer.start()
    try:
        run = world.deploy(env=fault_env(tmp_path))
    finally:
        writer.join()
        servers.remove_tree(lock)
    assert run.code == 3, run.stderr
    assert f"pid {os.getpid()}, running" in run.stderr
    check(world, [run], release=None)


def test_ten_concurrent_deploys_one_proceeds(world, tmp_path):
    """Exactly one gets every lock; the nine others exit 3 naming it and change nothing."""
    new_release(world)
    world.flag("hold-before_switch")  # the winner waits there until all others have ended
    processes = [world.start("deploy", "--json", env=fault_env(tmp_path)) for _ in range(10)]
    world.wait_for(world.flags / "inside-before_switch.host1", None)
    deadline = time.monotonic() + 120
    while sum(p.poll() is None for p in processes) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    (winner,) = [p for p in processes if p.poll() is None]
    world.flag("go-before_switch")
    runs = {p.pid: world.finish(p) for p in processes}
    assert runs[winner.pid].code == 0, runs[winner.pid].stderr
    for pid, run in runs.items():
        if pid != winner.pid:
            assert run.code == 3, run.stderr
            assert f"pid {winner.pid}, running" in run.stderr
    check(world, list(runs.values()), release=runs[winner.pid].report["release"])


def test_hook_output_never_shows_a_secret(world):
    """Hooks print what they like; the values of shared/.env's secrets are masked."""
    new_release(world)
    run = world.deploy(before_switch=['echo "using $API_TOKEN on $DATABASE_URL" >&2'])
    assert run.code == 0, run.stderr
    assert "using" in run.stderr
    check(world, [run], release=run.report["release"])


# -- ten runners on one ledger -------------------------------------------------------------------

RUNNER_EFFECT = """\
import os
from sqlalchemy import text

PREFIX = {prefix!r}

def run(ctx):
    insert = text("INSERT INTO marks (version, pid) VALUES (:v, :p)")
    ctx.db.execute(insert, dict(v=ctx.version, p=os.getpid()))
    ctx.redis.incr(PREFIX + ":" + ctx.version)
"""


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_ten_concurrent_runners_apply_each_migration_once(world, kind, request, tmp_path):
    """As tests/test_datamig_concurrency.py, with ten runners on each ledger and an effect
    outside the database: each migration's row and Redis counter appear exactly once."""
    from test_datamig_concurrency import RUNNER, create_marks, ledger_args, query, runner_env

    args, database = ledger_args(kind, request, tmp_path)
    create_marks(database)
    folder = tmp_path / "release" / "migrations"
    folder.mkdir(parents=True)
    prefix = f"runner_effect:{kind}"
    versions = [f"2020010100{index:02d}" for index in range(12)]
    for version in versions:
        (folder / f"{version}_mark.py").write_text(RUNNER_EFFECT.format(prefix=prefix))
    env = {**runner_env(), "REDIS_URL": world.redis_url}
    processes = [
        subprocess.Popen(
            [*RUNNER, "apply", "--json", "--lock-timeout", "120", *args],
            cwd=folder.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    outputs = [process.communicate(timeout=180) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    applied = sorted(m["version"] for out, _ in outputs for m in json.loads(out)["applied"])
    assert applied == versions  # each applied by exactly one of the ten
    marks = query(database, "SELECT version, COUNT(*) FROM marks GROUP BY version")
    assert sorted(marks) == [(version, 1) for version in versions]
    client = redis.Redis.from_url(world.redis_url, decode_responses=True)
    try:
        assert {v: client.get(f"{prefix}:{v}") for v in versions} == dict.fromkeys(versions, "1")
    finally:
        client.close()
