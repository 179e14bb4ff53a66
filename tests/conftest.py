"""Session-wide real servers (3 sshd hosts, PostgreSQL, Redis) and per-test isolation.

Servers start once per test run on loopback and stop at the end. Each test gets its own
PostgreSQL database (``pg_url``), its own flushed Redis database (``redis_url``) and its own
deploy roots. The developer's own ``~/.ssh`` never leaks in: HOME points at an empty directory.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import servers
from fleet import AppRepo, Fleet


@pytest.fixture(scope="session")
def server_dir():
    """A 0755 scratch directory for server files (pytest's tmp dirs are 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="deploytools-servers-"))
    directory.chmod(0o755)
    yield directory


@pytest.fixture(scope="session")
def postgres_server(server_dir):
    server = servers.start_postgres(server_dir / "postgres")
    yield server
    server.stop()


_database_numbers = itertools.count(1)


@pytest.fixture
def pg_url(postgres_server) -> str:
    """SQLAlchemy URL (postgresql+psycopg://) of a fresh, empty database for this test."""
    return postgres_server.create_database(f"test_{next(_database_numbers)}")


@pytest.fixture(scope="session")
def redis_server(server_dir):
    server = servers.start_redis(server_dir / "redis")
    yield server
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
    """Three sshd hosts on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (one known_hosts, one client key)."""
    cluster = servers.start_ssh_cluster(server_dir / "ssh")
    yield cluster
    cluster.stop()


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
    yield directory
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


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
