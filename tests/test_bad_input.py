"""Bad input, one table: every case is run as a user would (``invoke …`` in the application's
work tree, or the runner's command line on a host) and must

1. exit with the code of the README ("Exit codes": 2 bad input, 3 lock held, 1 a host could
   not be used),
2. say what to fix (a fragment of the message, not only that something failed),
3. change nothing: every file under every deploy root (``shared/`` included, with contents,
   links, the lock and ``revisions.jsonl``), the ledger's tables, Redis, ``known_hosts`` and
   the application's repository are the same before and after.

The fleet (three sshd hosts, a PostgreSQL ledger named in the migration host's
``shared/.env``, a Redis database, one deployed release with one applied migration, and a
local target) is made once for the module; each case changes what it needs first, and puts it
back afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import servers
from conftest import make_ssh_fleet
from fleet import AppRepo, Fleet

from deploytools.admin import setup
from deploytools.deploy import deploy
from deploytools.lock import LockOwner

SECRET = "s3cr3t-Pa55word"  # a password that must appear in no output

SEED = '''"""Seed: a feature flag in the application's table and in Redis."""

import sqlalchemy as sa


def run(ctx):
    ctx.db.execute(sa.text("CREATE TABLE flags (name text PRIMARY KEY, enabled boolean)"))
    ctx.db.execute(sa.text("INSERT INTO flags VALUES ('beta', true)"))
    ctx.redis.set("flag:beta", "1")
'''
SEED_FILE = "migrations/202401010000_seed_flags.py"
GOOD = '"""A good migration."""\n\n\ndef run(ctx):\n    ctx.log.info("ran")\n'


@dataclass
class World:
    """What every case runs against (made once for the module)."""

    fleet: Fleet  # the three sshd hosts
    local_root: Path  # a local target's root, set up, never deployed to
    directory: Path
    ledger_url: str
    spare_ledger_url: str  # an empty database: another ledger than the deploys used
    redis_url: str
    env_file: Path  # the migration host's shared/.env
    env_text: str
    base: str  # the commit every case starts from
    stranger_key: Path  # a private key no host accepts
    host_keys: list[str]  # each host's known_hosts line

    @property
    def migration_root(self) -> Path:
        return self.fleet.root(self.fleet.names[0])


@pytest.fixture(scope="module")
def world(ssh_cluster, postgres_server, redis_server) -> Iterator[World]:
    directory = Path(tempfile.mkdtemp(prefix="deploytools-badinput-"))
    directory.chmod(0o755)
    try:
        with pytest.MonkeyPatch.context() as patch:
            (directory / "home").mkdir()
            patch.setenv("HOME", str(directory / "home"))
            yield _make_world(directory, ssh_cluster, postgres_server, redis_server)
    finally:
        servers.remove_tree(directory)


def _make_world(directory: Path, cluster, postgres, redis_server) -> World:
    import redis

    repo = AppRepo(directory / "app")
    repo.commit({SEED_FILE: SEED}, "seed migration")
    fleet = make_ssh_fleet(cluster, directory, repo)
    setup(fleet.settings())
    local_root = directory / "local" / "app"
    setup(Fleet("local", ["local"], {"local": local_root}, repo).settings(root=str(local_root)))

    ledger_url = postgres.create_database("bad_input_ledger")
    spare_ledger_url = postgres.create_database("bad_input_spare_ledger")
    redis_url = redis_server.url(15)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.set("session:42", "kept")
    client.close()
    env_file = fleet.root(fleet.names[0]) / "shared" / ".env"
    env_text = f"DATABASE_URL={ledger_url}\nREDIS_URL={redis_url}\n"
    env_file.write_text(env_text)

    result = deploy(fleet.settings())
    assert result.status == "succeeded" and result.migrations["applied"]
    stranger_key = directory / "stranger_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger_key)], check=True
    )
    return World(
        fleet=fleet,
        local_root=local_root,
        directory=directory,
        ledger_url=ledger_url,
        spare_ledger_url=spare_ledger_url,
        redis_url=redis_url,
        env_file=env_file,
        env_text=env_text,
        base=repo.git("rev-parse", "HEAD"),
        stranger_key=stranger_key,
        host_keys=[host.known_hosts_line for host in cluster.hosts],
    )


# -- what must not change -------------------------------------------------------------------------


def tree(root: Path) -> dict[str, Any]:
    """Every path under ``root``: directories, links (target) and files (mode, sha256)."""
    found: dict[str, Any] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            if path.is_symlink():
                found[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                found[relative] = ("dir", path.stat().st_mode & 0o7777)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[relative] = ("file", path.stat().st_mode & 0o7777, digest)
    return found


def ledger_tables(url: str) -> dict[str, list[str]]:
    """Every table of the ledger's database, with its rows."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
            return {
                name: sorted(
                    repr(tuple(row)) for row in conn.execute(sa.text(f'SELECT * FROM "{name}"'))
                )
                for name in sorted(names)
            }
    finally:
        engine.dispose()


def redis_contents(url: str) -> dict[bytes, bytes | None]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return {key: client.dump(key) for key in sorted(client.keys("*"))}
    finally:
        client.close()


def snapshot(world: World) -> dict[str, Any]:
    """Everything a command could change."""
    fleet = world.fleet
    roots = {**fleet.roots, "local": world.local_root}
    return {
        "hosts": {name: tree(root) for name, root in roots.items()},
        "ledger": ledger_tables(world.ledger_url),
        "spare ledger": ledger_tables(world.spare_ledger_url),
        "redis": redis_contents(world.redis_url),
        "known_hosts": [
            path.read_text() if path.exists() else None
            for path in (fleet.known_hosts, world.directory / "known_hosts.partial")
        ],
        "repo": (
            fleet.repo.git("rev-parse", "HEAD"),
            fleet.repo.git("status", "--porcelain", "--untracked-files=all"),
        ),
    }


# -- the table -------------------------------------------------------------------------------------

Given = Callable[[World], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class Link:
    """A symlink committed to the application (``files``), pointing at ``target``."""

    target: str


@dataclass(frozen=True)
class Case:
    """One bad input and what the user must be told."""

    id: str
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # fragments of the message that say what to fix
    deploy: Mapping[str, Any] = field(default_factory=dict)  # keys over the fleet's config
    datamig: Mapping[str, Any] = field(default_factory=dict)
    edit: Callable[[dict[str, Any], World], None] | None = None  # changes invoke.yaml's mapping
    yaml: str | None = None  # invoke.yaml as written (instead of the fleet's)
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str | bytes | Link | None] = field(default_factory=dict)  # committed first
    given: tuple[Given, ...] = ()  # state made before the snapshot, undone after
    secret: str | None = None  # must appear in no output
    runner: bool = False  # args go to `python -m deploytools.datamig` in current/
    known_bug: str | None = None  # why the case fails today (xfail, strict)

    def __str__(self) -> str:
        return self.id


@contextlib.contextmanager
def env_file(world: World, text: str) -> Iterator[None]:
    """The migration host's shared/.env holds ``text`` (production secrets live there)."""
    world.env_file.write_text(text)
    try:
        yield
    finally:
        world.env_file.write_text(world.env_text)


def with_env_file(text: str) -> Given:
    return lambda world: env_file(world, text.format(world=world, port=servers.free_port()))


@contextlib.contextmanager
def _lock_held(world: World, host: int) -> Iterator[None]:
    owner = LockOwner(
        user="alice",
        host="alices-laptop",
        pid=4242,
        release="20260101000000-1234567",
        started_at="2026-01-01T00:00:00Z",
    )
    lock = world.fleet.root(world.fleet.names[host]) / "deploy.lock"
    lock.mkdir()
    (lock / "owner.json").write_text(owner.to_json() + "\n")
    try:
        yield
    finally:
        servers.remove_tree(lock)


def lock_held(host: int) -> Given:
    return lambda world: _lock_held(world, host)


def hosts_edit(change: Callable[[list[dict[str, Any]], World], None]):
    def edit(config: dict[str, Any], world: World) -> None:
        entries = [dict(entry) for entry in config["deploy"]["hosts"]]
        change(entries, world)
        config["deploy"]["hosts"] = entries

    return edit


def drop_key(key: str, rename: str | None = None):
    def edit(config: dict[str, Any], world: World) -> None:
        value = config["deploy"].pop(key)
        if rename:
            config["deploy"][rename] = value

    return edit


def known_hosts_without(host: int | None):
    """deploy.known_hosts: a file with every host's key but ``host``'s (None: no key at all)."""

    def edit(config: dict[str, Any], world: World) -> None:
        path = world.directory / "known_hosts.partial"
        keys = [key for index, key in enumerate(world.host_keys) if host not in (None, index)]
        path.write_text("".join(key + "\n" for key in keys))
        config["deploy"]["known_hosts"] = str(path)

    return edit


def local_target(config: dict[str, Any], world: World) -> None:
    config["deploy"]["hosts"] = ["local"]
    config["deploy"]["root"] = str(world.local_root)
    for key in ("known_hosts", "identity_file"):
        config["deploy"].pop(key, None)


def root_not_set_up(host: int):
    """Host ``host`` gets a root that ``invoke setup`` never made."""

    def edit(config: dict[str, Any], world: World) -> None:
        entries = config["deploy"]["hosts"]
        entries[host] = {**entries[host], "root": str(world.directory / "nowhere" / "app")}

    return edit


def both(*edits: Callable[[dict[str, Any], World], None]):
    def edit(config: dict[str, Any], world: World) -> None:
        for change in edits:
            change(config, world)

    return edit


def migration(name: str, source: str | bytes = GOOD) -> dict[str, str | bytes]:
    return {f"migrations/{name}": source}


CASES: list[Case] = [
    # -- keys ------------------------------------------------------------------------------------
    Case(
        "typo-hosts",
        ("deploy",),
        2,
        ("deploy.hots is not a known key", "did you mean deploy.hosts?"),
        edit=drop_key("hosts", rename="hots"),
    ),
    Case(
        "typo-keep-release",
        ("deploy",),
        2,
        ("deploy.keep_release is not a known key", "did you mean deploy.keep_releases?"),
        deploy={"keep_release": 3},
    ),
    Case(
        "typo-datamig-key",
        ("deploy",),
        2,
        ("did you mean datamig.lock_timeout?",),
        datamig={"lock_timout": 5},
    ),
    Case(
        "datamig-key-under-deploy",
        ("deploy",),
        2,
        ("deploy.lock_timeout is not a known key", "did you mean datamig.lock_timeout?"),
        deploy={"lock_timeout": -5},
    ),
    Case(
        "deploy-key-under-datamig",
        ("deploy",),
        2,
        ("datamig.keep_releases is not a known key", "did you mean deploy.keep_releases?"),
        datamig={"keep_releases": 3},
    ),
    Case(
        "typo-in-host-entry",
        ("deploy",),
        2,
        ("rot is not a known key", "did you mean", ".root?"),
        edit=hosts_edit(lambda entries, world: entries[0].update(rot=entries[0].pop("root"))),
    ),
    Case(
        "typo-in-a-stage-not-chosen",
        ("deploy",),
        2,
        ("deploy.stages.staging.keep_release", "did you mean deploy.stages.staging.keep_releases?"),
        deploy={"stages": {"staging": {"keep_release": 2}}},
    ),
    # -- hosts ---------------------------------------------------------------------------------
    Case("hosts-empty", ("deploy",), 2, ("deploy.hosts is empty",), deploy={"hosts": []}),
    Case(
        "hosts-missing",
        ("deploy",),
        2,
        ("set deploy.hosts", "[local]"),
        edit=drop_key("hosts"),
    ),
    Case(
        "host-bad-port",
        ("deploy",),
        2,
        ("deploy@web1:99999", "user@host[:port]"),
        deploy={"hosts": ["deploy@web1:99999"]},
    ),
    Case(
        "host-twice",
        ("deploy",),
        2,
        ("twice",),
        edit=hosts_edit(lambda entries, world: entries.append(entries[0])),
    ),
    Case(
        "hosts-list-from-env",
        ("deploy",),
        2,
        ("deploy.hosts must be a list", "cannot set a list", "invoke.yaml"),
        edit=drop_key("hosts"),
        env={"INVOKE_DEPLOY_HOSTS": "deploy@web1,deploy@web2"},
    ),
    Case(
        "hosts-list-from-env-over-file",
        ("deploy",),
        2,
        ("INVOKE_DEPLOY_HOSTS cannot hold a list", "invoke.yaml", "--hosts"),
        env={"INVOKE_DEPLOY_HOSTS": "deploy@web1,deploy@web2"},
    ),
    Case(
        "shared-files-from-env",
        ("deploy",),
        2,
        ("deploy.shared_files must be a list",),
        env={"INVOKE_DEPLOY_SHARED_FILES": ".env"},
    ),
    Case(
        "unknown-hosts-flag",
        ("deploy", "--hosts", "deploy@nosuch"),
        2,
        ("deploy@nosuch is not a configured host", "hosts: "),
    ),
    Case("empty-hosts-flag", ("deploy", "--hosts", ","), 2, ("--hosts needs at least one",)),
    Case(
        "unknown-stage",
        ("deploy", "--stage", "prod"),
        2,
        ("unknown stage 'prod'", "stages: staging"),
        deploy={"stages": {"staging": {"keep_releases": 2}}},
    ),
    Case(
        "unknown-stage-from-env",
        ("deploy",),
        2,
        ("unknown stage 'prod'",),
        env={"INVOKE_DEPLOY_STAGE": "prod"},
    ),
    Case(
        "limit-matches-nothing", ("deploy", "--limit", "db"), 2, ("'db' matches no host or role",)
    ),
    Case(
        "migrate-on-unknown",
        ("deploy",),
        2,
        ("deploy.migrate_on 'db1' is neither a host nor a role", "hosts: "),
        deploy={"migrate_on": "db1"},
    ),
    # -- values ----------------------------------------------------------------------------------
    Case(
        "accept-new-keys-false-from-env",
        ("deploy",),
        1,
        ("not in", "accept_new_host_keys"),
        edit=known_hosts_without(None),
        env={"INVOKE_DEPLOY_ACCEPT_NEW_HOST_KEYS": "false"},
    ),
    Case(
        "accept-new-keys-no-from-env-over-file",
        ("deploy",),
        1,
        ("not in", "accept_new_host_keys"),
        edit=known_hosts_without(None),
        deploy={"accept_new_host_keys": False},
        env={"INVOKE_DEPLOY_ACCEPT_NEW_HOST_KEYS": "no"},
    ),
    Case(
        "bad-boolean",
        ("deploy",),
        2,
        ("deploy.accept_new_host_keys must be true or false", "'maybe'"),
        deploy={"accept_new_host_keys": "maybe"},
    ),
    Case(
        "bad-boolean-from-env",
        ("deploy",),
        2,
        ("datamig.revert_on_rollback must be true or false", "'sometimes'"),
        env={"INVOKE_DATAMIG_REVERT_ON_ROLLBACK": "sometimes"},
    ),
    Case(
        "connect-timeout-soon",
        ("deploy",),
        2,
        ("deploy.connect_timeout must be a number of seconds", "'soon'"),
        deploy={"connect_timeout": "soon"},
    ),
    Case(
        "connect-timeout-soon-from-env",
        ("deploy",),
        2,
        ("deploy.connect_timeout must be a number of seconds", "'soon'"),
        env={"INVOKE_DEPLOY_CONNECT_TIMEOUT": "soon"},
    ),
    Case(
        "keep-releases-0",
        ("deploy",),
        2,
        ("deploy.keep_releases must be a whole number, at least 1",),
        deploy={"keep_releases": 0},
    ),
    Case(
        "keep-releases-fraction-from-env-over-file",
        ("deploy",),
        2,
        ("INVOKE_DEPLOY_KEEP_RELEASES='2.5' is not a whole number", "write 10.0 in the file"),
        deploy={"keep_releases": 10},
        env={"INVOKE_DEPLOY_KEEP_RELEASES": "2.5"},
    ),
    Case(
        "datamig-lock-timeout-negative",
        ("deploy",),
        2,
        ("datamig.lock_timeout must be a number of seconds, 0 or more",),
        datamig={"lock_timeout": -5},
    ),
    Case(
        "health-timeout-0",
        ("deploy",),
        2,
        ("deploy.health_timeout must be a number of seconds, greater than 0",),
        deploy={"health_timeout": 0},
    ),
    Case(
        "restart-batch-0-percent",
        ("deploy",),
        2,
        ("deploy.restart_batch must be a percentage from 1% to 100%",),
        deploy={"restart_batch": "0%"},
    ),
    Case(
        "restart-batch-0",
        ("deploy",),
        2,
        ("deploy.restart_batch must be a whole number, at least 1",),
        deploy={"restart_batch": 0},
    ),
    Case(
        "datamig-timeout-0",
        ("deploy",),
        2,
        ("datamig.timeout must be a number of seconds greater than 0, or none",),
        datamig={"timeout": 0},
    ),
    Case(
        "venv-unknown",
        ("deploy",),
        2,
        ("deploy.venv must be one of auto, off",),
        deploy={"venv": "sometimes"},
    ),
    Case(
        "installer-unknown",
        ("deploy",),
        2,
        ("deploy.installer must be one of auto, uv, pip",),
        deploy={"installer": "conda"},
    ),
    Case(
        "shared-file-outside-shared",
        ("deploy",),
        2,
        ("deploy.shared_files", "without '..'"),
        deploy={"shared_files": ["../../etc/passwd"]},
    ),
    Case(
        "health-and-health-cmd",
        ("deploy",),
        2,
        ("sets both health and health_cmd", "keep one"),
        deploy={"health": ["true"], "health_cmd": "true"},
    ),
    Case(
        "repo-not-a-git-tree",
        ("deploy",),
        2,
        ("is not a git work tree",),
        edit=lambda config, world: config["deploy"].update(repo=str(world.directory)),
    ),
    # -- the file itself ---------------------------------------------------------------------------
    Case(
        "malformed-yaml",
        ("deploy",),
        2,
        ("invalid invoke configuration", "line 2"),
        yaml="deploy:\n  hosts: [deploy@web1\n  root: /srv/app\n",
    ),
    Case(
        "deploy-as-a-list",
        ("deploy",),
        2,
        ("invalid invoke configuration", "deploy must be a mapping of keys, not list"),
        yaml="deploy:\n  - deploy@web1\n",
    ),
    Case(
        "datamig-as-text",
        ("deploy",),
        2,
        ("invalid invoke configuration", "datamig must be a mapping of keys, not str 'fast'"),
        yaml="deploy:\n  hosts: [local]\ndatamig: fast\n",
    ),
    # -- the release -----------------------------------------------------------------------------
    Case(
        "ref-unknown",
        ("deploy", "--ref", "v9.9.9"),
        2,
        ("--ref 'v9.9.9' is not a commit, branch or tag",),
    ),
    Case(
        "datamig-path-absent",
        ("deploy",),
        2,
        ("datamig.path 'db/migrations' is not in the release", "fix the path"),
        datamig={"path": "db/migrations"},
    ),
    Case(
        "migration-syntax-error",
        ("deploy",),
        2,
        ("202402010000_broken.py does not compile", "line 2", "fix the file"),
        files=migration("202402010000_broken.py", "def run(ctx):\n    return (\n"),
    ),
    Case(
        "migration-without-run",
        ("deploy",),
        2,
        ("202402010000_no_run.py has no run(ctx)",),
        files=migration(
            "202402010000_no_run.py", '"""Forgot run."""\n\ndef apply(ctx):\n    pass\n'
        ),
    ),
    Case(
        "migration-not-utf8",
        ("deploy",),
        2,
        ("202402010000_latin1.py is not valid UTF-8", "save it as UTF-8"),
        files=migration("202402010000_latin1.py", b'"""Caf\xe9."""\n\n\ndef run(ctx):\n    pass\n'),
    ),
    Case(
        "migration-latin1-with-its-coding-line",  # valid Latin-1: only the missing run() is wrong
        ("deploy",),
        2,
        ("202402010000_latin1.py has no run(ctx)",),
        files=migration("202402010000_latin1.py", b'# -*- coding: latin-1 -*-\n"""Caf\xe9."""\n'),
    ),
    Case(
        "migration-import-error",
        ("deploy",),
        2,
        ("202402010000_needs_lib.py fails to import", "No module named 'not_installed_lib'"),
        files=migration(
            "202402010000_needs_lib.py", "import not_installed_lib\n\n\ndef run(ctx):\n    pass\n"
        ),
    ),
    Case(
        "migration-duplicate-version",
        ("deploy",),
        2,
        ("duplicate migration version 20240201000000", "give one of them a new timestamp"),
        files={
            **migration("202402010000_first.py"),
            **migration("20240201000000_second.py"),
        },
    ),
    Case(
        "migration-malformed-name",
        ("deploy",),
        2,
        ("malformed migration file name 'add-flags.py'", "<12 or 14 digits>_<snake_case_name>.py"),
        files=migration("add-flags.py"),
    ),
    Case(
        "migration-version-reused-under-another-name",
        ("deploy",),
        2,
        ("202401010000", "seed_flags", "renamed_seed"),
        files={SEED_FILE: None, **migration("202401010000_renamed_seed.py")},
    ),
    Case(
        "migration-invalid-phase",
        ("deploy",),
        2,
        ("202402010000_later.py sets phase = 'later'", "before_switch"),
        files=migration("202402010000_later.py", 'phase = "later"\n\n\ndef run(ctx):\n    pass\n'),
    ),
    Case(
        "datamig-new-bad-name",
        ("datamig.new", "Add-Flags"),
        2,
        ("snake_case",),
    ),
    # -- the hosts -------------------------------------------------------------------------------
    Case(
        "dry-run-shared-file-missing",
        ("deploy", "--dry-run"),
        2,
        ("shared/.env.production",),
        deploy={"shared_files": [".env.production"]},
    ),
    Case(
        "deploy-shared-file-missing",
        ("deploy",),
        2,
        ("shared/.env.production",),
        deploy={"shared_files": [".env.production"]},
    ),
    Case(
        "host-not-set-up",
        ("deploy",),
        2,
        ("nowhere/app does not exist", "invoke setup"),
        edit=root_not_set_up(1),
    ),
    Case(
        "unknown-host-key",
        ("deploy",),
        1,
        ("not in", "known_hosts", "accept_new_host_keys"),
        edit=known_hosts_without(1),
    ),
    Case(
        "wrong-identity-file",
        ("deploy",),
        1,
        ("identity_file",),
        edit=lambda config, world: config["deploy"].update(identity_file=str(world.stranger_key)),
    ),
    Case(
        "identity-file-missing",
        ("deploy",),
        2,
        ("deploy.identity_file", "no-such-key", "is not a file on this machine"),
        edit=lambda config, world: config["deploy"].update(
            identity_file=str(world.directory / "no-such-key")
        ),
    ),
    Case(
        "identity-file-missing-setup",
        ("setup",),
        2,
        ("deploy.identity_file", "is not a file on this machine"),
        edit=lambda config, world: config["deploy"].update(identity_file="~/no-such-key"),
    ),
    Case(
        "lock-held",
        ("deploy",),
        3,
        ("alice@alices-laptop", "pid 4242", "invoke lock.release"),
        given=(lock_held(1),),
    ),
    Case(
        "lock-held-dry-run",
        ("deploy", "--dry-run"),
        3,
        ("alice@alices-laptop",),
        given=(lock_held(2),),
    ),
    Case(
        "rollback-lock-held",
        ("rollback", "--to", "20990101000000-abcdef1"),
        3,
        ("alice@alices-laptop", "invoke lock.release"),
        given=(lock_held(2),),
    ),
    Case(
        "status-host-not-set-up",
        ("datamig.status",),
        2,
        ("nowhere/app does not exist", "invoke setup"),
        edit=root_not_set_up(0),
    ),
    Case(
        "releases-host-not-set-up",
        ("releases", "--json"),
        2,
        ("nowhere/app does not exist", "invoke setup"),
        edit=root_not_set_up(1),
    ),
    Case(
        "lock-release-unknown-host",
        ("lock.release", "--hosts", "deploy@nosuch"),
        2,
        ("deploy@nosuch is not a configured host",),
        given=(lock_held(0),),
    ),
    # -- hosts failing differently: the most severe exit code wins (3 over 2 over 1) ------------
    Case(
        "lock-held-and-not-set-up",
        ("deploy",),
        3,
        ("failed on 2 hosts", "alice@alices-laptop", "nowhere/app does not exist"),
        edit=root_not_set_up(2),
        given=(lock_held(1),),
    ),
    Case(
        "unknown-host-key-and-not-set-up",
        ("deploy",),
        2,
        ("failed on 2 hosts", "is not in", "nowhere/app does not exist"),
        edit=both(known_hosts_without(1), root_not_set_up(2)),
    ),
    # -- the ledger and Redis, as the check step finds them ---------------------------------------
    Case(
        "database-url-one-slash",
        ("deploy",),
        2,
        ("DATABASE_URL", "'://' (two slashes)"),
        given=(with_env_file(f"DATABASE_URL=postgresql+psycopg:/app:{SECRET}@127.0.0.1/app\n"),),
        secret=SECRET,
    ),
    Case(
        "database-url-one-slash-status-json",
        ("datamig.status", "--json"),
        2,
        ("'://' (two slashes)",),
        given=(with_env_file(f"DATABASE_URL=postgresql+psycopg:/app:{SECRET}@127.0.0.1/app\n"),),
        secret=SECRET,
    ),
    Case(
        "sqlite-url-relative",
        ("deploy",),
        2,
        ("is relative", "sqlite:////"),
        given=(with_env_file("DATABASE_URL=sqlite:///ledger.db\n"),),
    ),
    Case(
        "ledger-unreachable",
        ("deploy",),
        2,
        ("Check DATABASE_URL",),
        given=(
            with_env_file(
                f"DATABASE_URL=postgresql+psycopg://app:{SECRET}@127.0.0.1:{{port}}/app\n"
            ),
        ),
        secret=SECRET,
    ),
    Case(
        "ledger-unreachable-dry-run",
        ("deploy", "--dry-run"),
        2,
        ("Check DATABASE_URL",),
        given=(
            with_env_file(
                f"DATABASE_URL=postgresql+psycopg://app:{SECRET}@127.0.0.1:{{port}}/app\n"
            ),
        ),
        secret=SECRET,
    ),
    Case(
        "ledger-replaced",
        ("deploy",),
        2,
        ("--new-ledger",),
        given=(with_env_file("DATABASE_URL={world.spare_ledger_url}\n"),),
    ),
    Case(
        "ledger-replaced-dry-run",
        ("deploy", "--dry-run"),
        2,
        ("--new-ledger",),
        given=(with_env_file("DATABASE_URL={world.spare_ledger_url}\n"),),
    ),
    Case(
        "apply-database-url-one-slash",
        ("datamig.apply",),
        2,
        ("'://' (two slashes)",),
        given=(with_env_file(f"DATABASE_URL=postgresql+psycopg:/app:{SECRET}@127.0.0.1/app\n"),),
        secret=SECRET,
    ),
    Case(
        "apply-host-not-set-up",
        ("datamig.apply",),
        2,
        ("nowhere/app does not exist", "invoke setup"),
        edit=root_not_set_up(0),
    ),
    Case(
        "redis-unreachable",
        ("deploy",),
        2,
        ("REDIS_URL",),
        given=(
            with_env_file(
                "DATABASE_URL={world.ledger_url}\n"
                f"REDIS_URL=redis://:{SECRET}@127.0.0.1:{{port}}/0\n"
            ),
        ),
        secret=SECRET,
    ),
    Case(
        "env-file-malformed-line",
        ("deploy",),
        2,
        ("shared/.env:2: expected KEY=VALUE", "fix or remove this line"),
        given=(with_env_file("DATABASE_URL={world.ledger_url}\nthis is not a variable\n"),),
    ),
    Case(
        "env-file-unterminated-quote",
        ("deploy",),
        2,
        (".env", "unterminated"),
        given=(with_env_file(f'DATABASE_URL="postgresql+psycopg://app:{SECRET}@127.0.0.1/app\n'),),
        secret=SECRET,
    ),
    Case(
        "json-database-url-one-slash",
        ("deploy", "--json"),
        2,
        ("'://' (two slashes)",),
        given=(with_env_file(f"DATABASE_URL=postgresql+psycopg:/app:{SECRET}@127.0.0.1/app\n"),),
        secret=SECRET,
    ),
    Case(
        "hook-prints-a-token-and-fails",  # a failure, not bad input: exit 1, nothing changed
        ("deploy",),
        1,
        ("before_switch failed on 3 hosts",),
        deploy={"before_switch": ['echo "token is $API_TOKEN"; exit 3']},
        given=(with_env_file(f"DATABASE_URL={{world.ledger_url}}\nAPI_TOKEN={SECRET}\n"),),
        secret=SECRET,
    ),
    Case(
        "status-release-path",
        ("datamig.status", "--release", "../../../../tmp"),
        2,
        ("'../../../../tmp' is not a release id", "invoke releases"),
    ),
    Case(
        "status-release-unknown",
        ("datamig.status", "--release", "20990101000000-abcdef1"),
        2,
        ("20990101000000-abcdef1",),
    ),
    Case(
        "rollback-to-unknown",
        ("rollback", "--to", "20990101000000-abcdef1"),
        2,
        ("release 20990101000000-abcdef1 is not on", "invoke releases"),
    ),
    # -- the environment ---------------------------------------------------------------------------
    Case(
        "lock-file-installs-the-release",
        ("deploy",),
        2,
        ("requirements.txt:2 installs the release itself", "Remove the line"),
        files={"requirements.txt": "requests==2.32.3\n-e .\n"},
    ),
    Case(
        "requirements-missing",
        ("deploy",),
        2,
        ("deploy.requirements 'requirements/prod.txt' is not in the release",),
        deploy={"requirements": "requirements/prod.txt"},
    ),
    Case(
        "uv-lock-without-uv",
        ("deploy",),
        2,
        ("has no uv", "install uv on the host"),
        files={"uv.lock": "version = 1\n"},
        edit=local_target,
        env={"PATH": "/usr/bin:/bin"},
    ),
    Case(
        "migration-phase-not-a-literal",
        ("deploy",),
        2,
        ("202402010000_computed.py sets phase = None", "a string literal"),
        files=migration(
            "202402010000_computed.py", 'phase = "after_" + "switch"\n\n\ndef run(ctx):\n    pass\n'
        ),
    ),
    Case(
        "migration-run-not-callable",
        ("deploy",),
        2,
        ("202402010000_not_callable.py has no run(ctx) function",),
        files=migration("202402010000_not_callable.py", "run = 5\n"),
    ),
    Case(
        "migration-exits-on-import",
        ("deploy",),
        2,
        ("202402010000_exits.py fails to import", "SystemExit"),
        files=migration(
            "202402010000_exits.py", "import sys\n\nsys.exit(3)\n\n\ndef run(ctx):\n    pass\n"
        ),
    ),
    Case(
        "release-link-leaving-the-release",
        ("deploy",),
        2,
        ("'passwords' is a link leaving the release (-> /etc/passwd)", "nothing was uploaded"),
        files={"passwords": Link("/etc/passwd")},
    ),
    Case(
        "ref-with-shell-characters",
        ("deploy", "--ref", "$(touch pwned)"),
        2,
        ("--ref '$(touch pwned)' is not a commit, branch or tag",),
    ),
    Case(
        "deploy-python-missing",
        ("deploy",),
        2,
        ("the migration runner did not start", "deploy.python"),
        edit=hosts_edit(lambda entries, world: entries[0].update(python="/nonexistent/python3")),
    ),
    Case(
        "venv-python-missing",
        ("deploy",),
        2,
        ("/nonexistent/python3",),
        deploy={"venv_python": "/nonexistent/python3"},
        files={"requirements.txt": "tinyapp_dep==1.0\n"},
    ),
    Case(
        "inventory-missing",
        ("deploy",),
        2,
        ("inventories/nope.ini",),
        edit=drop_key("hosts"),
        deploy={"inventory": "inventories/nope.ini"},
    ),
    Case(
        "inventory-and-hosts",
        ("deploy",),
        2,
        ("set deploy.hosts or deploy.inventory, not both",),
        deploy={"inventory": "inventory.ini"},
        files={"inventory.ini": "[web]\nweb1.example.com\n"},
    ),
    Case(
        "limit-excludes-nothing-known",
        ("deploy", "--limit", "all:!nosuch"),
        2,
        ("nosuch",),
    ),
    Case(
        "rollback-no-earlier-release",
        ("rollback",),
        2,
        ("no earlier good release than", "invoke releases"),
    ),
    Case(
        "rollback-to-shell-characters",
        ("rollback", "--to", "$(touch pwned)"),
        2,
        ("release $(touch pwned) is not on",),
    ),
    Case(
        "status-release-shell-characters",
        ("datamig.status", "--release", "20260101000000-$(id)"),
        2,
        ("is not a release id",),
    ),
    Case(
        "datamig-apply-lock-held",
        ("datamig.apply", "--json"),
        3,
        ("alice@alices-laptop", "invoke lock.release"),
        given=(lock_held(0),),
    ),
    Case(
        "migration-name-not-snake-case",
        ("deploy",),
        2,
        ("malformed migration file name '202402010000_AddFlags.py'",),
        files=migration("202402010000_AddFlags.py"),
    ),
    Case(
        "migration-version-13-digits",
        ("deploy",),
        2,
        ("malformed migration file name '2024020100001_add_flags.py'", "12 or 14 digits"),
        files=migration("2024020100001_add_flags.py"),
    ),
    Case(
        "datamig-path-is-a-file",
        ("deploy",),
        2,
        ("datamig.path 'app.py' is not in the release",),
        datamig={"path": "app.py"},
    ),
    Case(
        "local-target-not-set-up",
        ("deploy",),
        2,
        (".deploy does not exist", "invoke setup"),
        deploy={"hosts": ["local"]},
        edit=lambda config, world: [
            config["deploy"].pop(k) for k in ("known_hosts", "identity_file")
        ],
    ),
    Case(
        "installer-uv-without-uv",
        ("deploy",),
        2,
        ("has no uv", "deploy.installer: uv"),
        deploy={"installer": "uv"},
        files={"requirements.txt": "tinyapp_dep==1.0\n"},
        edit=local_target,
        env={"PATH": "/usr/bin:/bin"},
    ),
    Case(
        "connect-timeout-0-from-env",
        ("deploy",),
        2,
        ("deploy.connect_timeout must be a number of seconds, greater than 0",),
        env={"INVOKE_DEPLOY_CONNECT_TIMEOUT": "0"},
    ),
    Case("datamig-new-empty-name", ("datamig.new", ""), 2, ("snake_case",)),
    Case(
        "json-lock-status-bad-config",
        ("lock.status", "--json"),
        2,
        ("deploy.hosts is empty",),
        deploy={"hosts": []},
    ),
    # -- deploy --dry-run exits with the code the deploy would have -------------------------------
    Case(
        "dry-run-unknown-host-key",
        ("deploy", "--dry-run"),
        1,
        ("not in", "accept_new_host_keys"),
        edit=known_hosts_without(2),
    ),
    Case(
        "dry-run-sqlite-url-relative",
        ("deploy", "--dry-run"),
        2,
        ("is relative", "sqlite:////"),
        given=(with_env_file("DATABASE_URL=sqlite:///ledger.db\n"),),
    ),
    Case(
        "dry-run-version-reused-under-another-name",
        ("deploy", "--dry-run"),
        2,
        ("202401010000", "seed_flags", "renamed_seed"),
        files={SEED_FILE: None, **migration("202401010000_renamed_seed.py")},
    ),
    Case(
        "dry-run-redis-unreachable",
        ("deploy", "--dry-run"),
        2,
        ("REDIS_URL",),
        given=(
            with_env_file(
                "DATABASE_URL={world.ledger_url}\n"
                f"REDIS_URL=redis://:{SECRET}@127.0.0.1:{{port}}/0\n"
            ),
        ),
        secret=SECRET,
    ),
    Case(
        "dry-run-migration-import-error",
        ("deploy", "--dry-run"),
        2,
        ("202402010000_needs_lib.py fails to import",),
        files=migration(
            "202402010000_needs_lib.py", "import not_installed_lib\n\n\ndef run(ctx):\n    pass\n"
        ),
    ),
    # -- more of the same kind ---------------------------------------------------------------------
    Case(
        "invoke-parser-unknown-flag",  # invoke's own parser: exit 1, as invoke does
        ("deploy", "--bogus"),
        1,
        ("No idea what '--bogus' is",),
    ),
    Case(
        "host-entry-not-text",
        ("deploy",),
        2,
        ("deploy.hosts entry 42", "'user@host[:port]'"),
        deploy={"hosts": [42]},
    ),
    Case(
        "root-missing",
        ("deploy",),
        2,
        ("set deploy.root",),
        edit=hosts_edit(lambda entries, world: [entry.pop("root") for entry in entries]),
    ),
    Case(
        "stages-as-a-list",
        ("deploy",),
        2,
        ("invalid invoke configuration", "deploy.stages must be a mapping of keys"),
        deploy={"stages": ["staging"]},
    ),
    Case(
        "hosts-as-a-mapping",
        ("deploy",),
        2,
        ("invalid invoke configuration", "deploy.hosts cannot be a mapping"),
        yaml="deploy:\n  hosts: {web1: deploy@web1}\n",
    ),
    Case(
        "install-args-as-text",
        ("deploy",),
        2,
        ("deploy.install_args must be a list of arguments",),
        deploy={"install_args": "--no-index"},
    ),
    Case(
        "build-command-empty",
        ("deploy",),
        2,
        ("deploy.build must be a list of commands",),
        deploy={"build": [""]},
    ),
    Case(
        "build-command-fails",
        ("deploy",),
        2,
        ("build command `make assets` exited", "nothing was uploaded"),
        deploy={"build": ["make assets"]},
    ),
    Case(
        "keepalive-0",
        ("deploy",),
        2,
        ("deploy.keepalive must be a number of seconds, greater than 0",),
        deploy={"keepalive": 0},
    ),
    Case(
        "statement-timeout-negative",
        ("deploy",),
        2,
        ("datamig.statement_timeout must be a number of seconds greater than 0",),
        datamig={"statement_timeout": -1},
    ),
    Case(
        "restart-batch-from-env",
        ("deploy",),
        2,
        ("deploy.restart_batch must be a whole number", "'half'"),
        env={"INVOKE_DEPLOY_RESTART_BATCH": "half"},
    ),
    Case(
        "known-hosts-file-missing",
        ("deploy",),
        1,
        ("no-such-known-hosts", "accept_new_host_keys"),
        edit=lambda config, world: config["deploy"].update(
            known_hosts=str(world.directory / "no-such-known-hosts")
        ),
    ),
    Case(
        "rollback-to-a-path",
        ("rollback", "--to", "../../../etc"),
        2,
        ("release ../../../etc is not on",),
    ),
    Case(
        "restart-unknown-host",
        ("restart", "--hosts", "deploy@nosuch"),
        2,
        ("deploy@nosuch is not a configured host",),
    ),
    Case(
        "releases-limit-matches-nothing",
        ("releases", "--limit", "web"),
        2,
        ("'web' matches no host or role",),
    ),
    Case(
        "datamig-new-path-outside",
        ("datamig.new", "add_flags"),
        2,
        ("datamig.path", "without '..'"),
        datamig={"path": "../elsewhere"},
    ),
    # -- --json: exactly one JSON object -----------------------------------------------------------
    Case(
        "json-bad-config",
        ("deploy", "--json"),
        2,
        ("deploy.keep_releases must be a whole number",),
        deploy={"keep_releases": 0},
    ),
    Case(
        "json-bad-migration",
        ("deploy", "--json"),
        2,
        ("does not compile",),
        files=migration("202402010000_broken.py", "def run(ctx)\n    pass\n"),
    ),
    Case(
        "json-lock-held",
        ("deploy", "--json"),
        3,
        ("alice@alices-laptop",),
        given=(lock_held(1),),
    ),
    Case(
        "json-malformed-yaml",
        ("deploy", "--json"),
        2,
        ("invalid invoke configuration", "line 2"),
        yaml="deploy:\n  hosts: [deploy@web1\n  root: /srv/app\n",
    ),
    Case(
        "json-dry-run-lock-held",
        ("deploy", "--dry-run", "--json"),
        3,
        ("alice@alices-laptop",),
        given=(lock_held(0),),
    ),
    Case(
        "json-rollback-to-unknown",
        ("rollback", "--json", "--to", "20990101000000-abcdef1"),
        2,
        ("is not on",),
    ),
    # -- the runner's own command line, on the migration host -----------------------------------
    Case(
        "runner-lock-timeout-negative",
        ("apply", "--lock-timeout", "-5"),
        2,
        ("--lock-timeout cannot be negative", "0 means do not wait"),
        runner=True,
    ),
    Case(
        "runner-phase-unknown",
        ("apply", "--phase", "later"),
        2,
        ("invalid choice: 'later'", "before_switch"),
        runner=True,
    ),
    Case(
        "runner-revert-without-version",
        ("revert",),
        2,
        ("exactly one of VERSION or --release ID",),
        runner=True,
    ),
    Case(
        "runner-unknown-command",
        ("migrate",),
        2,
        ("invalid choice: 'migrate'", "apply"),
        runner=True,
    ),
    Case(
        "runner-statement-timeout-0",
        ("apply", "--statement-timeout", "0"),
        2,
        ("--statement-timeout must be more than 0 seconds",),
        runner=True,
    ),
    Case(
        "runner-revert-unknown-version",
        ("revert", "209901010000"),
        2,
        ("209901010000",),
        runner=True,
    ),
    Case(
        "runner-database-url-one-slash-json",
        ("status", "--json", "--database-url", f"postgresql+psycopg:/app:{SECRET}@db/app"),
        2,
        ("'://' (two slashes)",),
        runner=True,
        secret=SECRET,
    ),
]


def _config(case: Case, world: World) -> str:
    if case.yaml is not None:
        return case.yaml
    config = world.fleet.config(**dict(case.deploy), datamig=dict(case.datamig))
    config = json.loads(json.dumps(config))  # a copy a case may change
    if case.edit is not None:
        case.edit(config, world)
    return json.dumps(config, indent=2)


def _commit(world: World, files: Mapping[str, str | bytes | Link | None]) -> None:
    repo = world.fleet.repo
    for name, content in files.items():
        path = repo.path / name
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            path.symlink_to(content.target)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    repo.git("add", "-A", *files)
    repo.git("commit", "-q", "-m", "change")


def _reset(world: World) -> None:
    repo = world.fleet.repo
    repo.git("reset", "-q", "--hard", world.base)
    repo.git("clean", "-q", "-fdx", "-e", "invoke.yaml")


def _run(case: Case, world: World) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", **case.env}
    if case.runner:
        root = world.migration_root
        argv = [sys.executable, "-m", "deploytools.datamig", *case.args]
        argv += ["--root", str(root), "--env-file", str(root / "shared" / ".env")]
        cwd = root / "current"
    else:
        argv = [sys.executable, "-m", "invoke", *case.args]
        cwd = world.fleet.repo.path
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=180, env=env)


def _params() -> list[Any]:
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=case.known_bug)] if case.known_bug else [],
        )
        for case in CASES
    ]


@pytest.mark.parametrize("case", _params())
def test_bad_input(world, case: Case):
    with contextlib.ExitStack() as stack:
        stack.callback(_reset, world)
        if case.files:
            _commit(world, case.files)
        (world.fleet.repo.path / "invoke.yaml").write_text(_config(case, world))
        for given in case.given:
            stack.enter_context(given(world))
        before = snapshot(world)
        completed = _run(case, world)
        after = snapshot(world)

    output = (
        f"exit {completed.returncode}\nstdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    )
    assert completed.returncode == case.code, output
    message = completed.stderr
    if "--json" in case.args:
        answer = json.loads(completed.stdout)  # exactly one object: anything more fails here
        assert isinstance(answer, dict), output
        assert answer.get("error"), output
        message = answer["error"]
    for fragment in case.says:
        assert fragment in message, output
    assert "Traceback" not in completed.stderr, output
    if case.secret:
        assert case.secret not in completed.stdout + completed.stderr
    assert after == before
    assert not (world.directory / "nowhere").exists()


def test_the_table_is_large_and_its_cases_distinct():
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


def test_the_snapshot_sees_every_kind_of_change(world):
    """The comparison above is not vacuous: a change of each kind shows in the snapshot."""
    import redis
    import sqlalchemy as sa

    before = snapshot(world)
    root = world.fleet.root(world.fleet.names[2])
    revisions = (root / "revisions.jsonl").read_bytes()
    changes = [
        lambda: (root / "shared" / "log").mkdir(),
        lambda: (root / "revisions.jsonl").open("a").write("{}\n"),
        lambda: world.env_file.write_text(world.env_text + "EXTRA=1\n"),
    ]
    for change in changes:
        change()
        assert snapshot(world) != before
    (root / "shared" / "log").rmdir()
    (root / "revisions.jsonl").write_bytes(revisions)
    world.env_file.write_text(world.env_text)
    assert snapshot(world) == before

    client = redis.Redis.from_url(world.redis_url)
    client.set("flag:beta", "0")
    assert snapshot(world)["redis"] != before["redis"]
    client.set("flag:beta", "1")
    client.close()
    engine = sa.create_engine(world.ledger_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE flags SET enabled = false"))
        assert snapshot(world)["ledger"] == before["ledger"]  # not committed yet
    assert snapshot(world)["ledger"] != before["ledger"]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE flags SET enabled = true"))
    engine.dispose()
    assert snapshot(world) == before
