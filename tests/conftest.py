"""Session-wide real servers (3 sshd hosts, PostgreSQL, Redis) and per-test isolation.

Servers start once per test run on loopback and stop at the end. Each test gets its own
PostgreSQL database (``pg_url``), its own flushed Redis database (``redis_url``) and its own
deploy roots. The developer's own ``~/.ssh`` never leaks in: HOME points at an empty directory.

The run keeps every temporary file in one directory of its own (``TMPDIR`` for this process,
its children and the sshd hosts' sessions), removed at the end, also after Ctrl-C or SIGTERM.
A check that runs last fails the run naming whatever a test left there, or left running.
pytest's own ``tmp_path`` directories stay where pytest keeps them.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import servers
import wheelhouse as wheels
from fleet import AppRepo, Fleet

RUN_TMP = pytest.StashKey[Path]()
_interrupted = False  # Ctrl-C or SIGTERM: clean up all the same, without blaming the tests


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    """Give the run its own temp dir before anything creates a temporary file."""
    # pytest's tmp_path stays in the system temp dir, where pytest keeps the last runs' ones
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    run_tmp = Path(tempfile.mkdtemp(prefix="deploytools-run-"))
    run_tmp.chmod(0o755)  # the postgres user (as root) and non-root logins pass through it
    os.environ["TMPDIR"] = str(run_tmp)
    tempfile.tempdir = str(run_tmp)
    config.stash[RUN_TMP] = run_tmp
    # a CI job cancelled with SIGTERM cleans up like Ctrl-C: servers stopped, files removed
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_keyboard_interrupt(excinfo):
    global _interrupted
    _interrupted = True


def pytest_unconfigure(config):
    run_tmp = config.stash.get(RUN_TMP, None)
    if run_tmp is not None:
        servers.remove_tree(run_tmp)


@pytest.fixture(scope="session", autouse=True)
def no_leftovers(request):
    """Set up first, so torn down last (after every server has stopped): fail the run naming
    the files left in its temp dir and the processes still running from there."""
    run_tmp = request.config.stash[RUN_TMP]
    yield run_tmp
    running = servers.processes_using(run_tmp)
    servers.signal_all([pid for pid, _ in running], signal.SIGKILL)
    left = sorted(run_tmp.iterdir())
    for path in left:
        servers.remove_tree(path)
    problems = [f"left running: pid {pid}: {command}" for pid, command in running]
    problems += [f"left behind: {path}" for path in left]
    if problems and not _interrupted:
        pytest.fail("the run did not clean up after itself:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def server_dir():
    """A 0755 scratch directory for server files (pytest's tmp dirs are 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="deploytools-servers-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        servers.remove_tree(directory)  # holds the client's private key


@pytest.fixture(scope="session")
def postgres_server(server_dir):
    server = servers.start_postgres(server_dir / "postgres")
    try:
        yield server
    finally:
        server.stop()


_database_numbers = itertools.count(1)


@pytest.fixture
def pg_url(postgres_server) -> str:
    """SQLAlchemy URL (postgresql+psycopg://) of a fresh, empty database for this test."""
    return postgres_server.create_database(f"test_{next(_database_numbers)}")


@pytest.fixture(scope="session")
def redis_server(server_dir):
    server = servers.start_redis(server_dir / "redis")
    try:
        yield server
    finally:
        server.stop()


_redis_numbers = itertools.count()


@pytest.fixture
def redis_url(redis_server) -> str:
    """URL of a Redis database flushed for this test (the 16 databases are reused in turn)."""
    import redis

    url = redis_server.url(next(_redis_numbers) % 16)
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture(scope="session")
def ssh_cluster(server_dir):
    """Three sshd hosts on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (one known_hosts, one client key),
    logging in the user running the tests."""
    cluster = servers.start_ssh_cluster(server_dir / "ssh")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def host_path_bin(ssh_cluster) -> Path:
    """The directory first on the sshd hosts' PATH: it holds ``uv`` (a link to the test
    environment's) and nothing else, so ``python3`` there is still the system one."""
    return ssh_cluster.path_bin


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """A 0755 directory of wheels to install from with ``--no-index --find-links DIR``:
    ``tinyapp_dep`` 1.0 and 2.0 (module ``tinyapp_dep``, console script ``tinyapp-hello``),
    deploytools built from this checkout, and deploytools' dependencies (from the
    ``.wheelhouse/`` cache that ``python3 dev.py test`` fills). Never touches the network."""
    directory = Path(tempfile.mkdtemp(prefix="deploytools-wheelhouse-"))
    directory.chmod(0o755)
    try:
        yield wheels.assemble(directory)
    finally:
        servers.remove_tree(directory)


@pytest.fixture(autouse=True)
def no_user_ssh(tmp_path_factory, monkeypatch):
    """Point HOME at an empty directory so the developer's ~/.ssh (keys, config, known_hosts)
    and ssh-agent never take part in a test."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    yield home


@pytest.fixture
def deploy_dir():
    """A fresh 0755 directory for this test's deploy roots, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="deploytools-test-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        servers.remove_tree(directory)


def pytest_report_header(config):
    return f"deploytools tests as uid {os.geteuid()}"


# -- fleets to deploy to ------------------------------------------------------------------------


@pytest.fixture
def app_repo(deploy_dir) -> AppRepo:
    """A git work tree with one commit, standing for the application being released."""
    return AppRepo(deploy_dir / "app")


def make_ssh_fleet(cluster, deploy_dir: Path, repo: AppRepo, *, roots=None) -> Fleet:
    """The three sshd hosts, each with its own root (a per-host override in deploy.hosts)."""
    roots = roots or {
        host.spec: deploy_dir / f"host{index}" / "app"
        for index, host in enumerate(cluster.hosts, start=1)
    }
    entries = [
        {"host": name, "root": str(root), "python": sys.executable} for name, root in roots.items()
    ]
    return Fleet(
        kind="ssh",
        entries=entries,
        roots=dict(roots),
        repo=repo,
        known_hosts=cluster.known_hosts,
        identity_file=cluster.client_key,
    )


def make_local_fleet(deploy_dir: Path, repo: AppRepo) -> Fleet:
    root = deploy_dir / "local" / "app"
    return Fleet(
        kind="local", entries=["local"], roots={"local": root}, repo=repo, extra={"root": str(root)}
    )


@pytest.fixture
def ssh_fleet(ssh_cluster, deploy_dir, app_repo) -> Fleet:
    """Three sshd hosts, set up (releases/ and shared/ exist)."""
    from deploytools.admin import setup

    fleet = make_ssh_fleet(ssh_cluster, deploy_dir, app_repo)
    setup(fleet.settings())
    return fleet


@pytest.fixture(params=["ssh", "local"])
def fleet(request, deploy_dir, app_repo) -> Fleet:
    """The same scenario on three sshd hosts and on one local directory target."""
    from deploytools.admin import setup

    if request.param == "ssh":
        fleet = make_ssh_fleet(request.getfixturevalue("ssh_cluster"), deploy_dir, app_repo)
    else:
        fleet = make_local_fleet(deploy_dir, app_repo)
    setup(fleet.settings())
    return fleet
