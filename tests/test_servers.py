"""The harness itself: every server answers, hosts are distinct, keys are checked, and the fault
and measurement helpers do what the deploy tests rely on, as root and as any other user."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import paramiko
import pytest
import redis
import servers
import sqlalchemy
import wheelhouse as wheels
from fleet import Fleet


def ssh(cluster, host, command: str, *, via=None, known_hosts=None) -> list[str]:
    """The OpenSSH client's argv for ``command`` on ``host`` (strict host key checking),
    connecting through the proxy ``via`` when given."""
    address, port = (via.address, via.port) if via else (host.address, host.port)
    return [
        "ssh",
        "-i",
        str(cluster.client_key),
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts or cluster.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-p",
        str(port),
        f"{host.user}@{address}",
        command,
    ]


def connect(cluster, host) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(cluster.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.address,
        port=host.port,
        username=host.user,
        key_filename=str(cluster.client_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def test_postgres_databases_are_fresh(pg_url):
    engine = sqlalchemy.create_engine(pg_url)
    with engine.connect() as conn:
        tables = conn.execute(
            sqlalchemy.text("select count(*) from pg_tables where schemaname = 'public'")
        ).scalar()
    engine.dispose()
    assert tables == 0


def test_redis_database_is_empty(redis_url):
    client = redis.Redis.from_url(redis_url)
    assert client.ping() and client.dbsize() == 0


def test_three_sshd_hosts_answer_with_their_own_key(ssh_cluster):
    addresses = set()
    for host in ssh_cluster.hosts:
        out = subprocess.run(
            ssh(ssh_cluster, host, "echo $SSH_CONNECTION"),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        addresses.add(out[2])
    assert addresses == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}
    keys = {line.split()[2] for line in ssh_cluster.known_hosts.read_text().splitlines()}
    assert len(keys) == 3


def test_hosts_find_uv_but_the_system_python(ssh_cluster, host_path_bin):
    host = ssh_cluster.hosts[0]
    out = subprocess.run(
        ssh(ssh_cluster, host, "command -v uv; command -v python3; echo $TMPDIR; uv --version"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == str(host_path_bin / "uv")
    assert sorted(p.name for p in host_path_bin.iterdir()) == ["uv"]
    assert not out[1].startswith(sys.prefix) and Path(out[1]).name == "python3"
    assert out[2] == tempfile.gettempdir()  # the hosts share the run's temp dir
    assert out[3].startswith("uv ")


def test_kill_sessions_cuts_the_connection_but_not_the_command(ssh_cluster):
    host = ssh_cluster.hosts[1]
    client = subprocess.Popen(
        ssh(ssh_cluster, host, "echo $$; exec sleep 60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    remote_pid = int(client.stdout.readline())
    try:
        killed = host.kill_sessions()
        assert killed
        assert client.wait(30) == 255  # the client saw its connection drop
        assert host.session_pids() == []
        os.kill(remote_pid, 0)  # the remote command runs on, as after a network failure
    finally:
        os.kill(remote_pid, signal.SIGKILL)
        client.communicate()


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def test_a_stopped_session_does_not_answer_until_continued(ssh_cluster):
    host = ssh_cluster.hosts[2]
    client = connect(ssh_cluster, host)
    try:
        _, out, _ = client.exec_command("echo before")
        assert out.read() == b"before\n"
        stopped = host.stop_session()
        assert stopped and all(_state(pid) == "T" for pid in stopped)
        with pytest.raises(paramiko.SSHException):
            client.get_transport().open_session(timeout=1)
        assert host.continue_session() == stopped
        assert all(_state(pid) != "T" for pid in stopped)
        _, out, _ = client.exec_command("echo after")
        assert out.read() == b"after\n"
    finally:
        host.continue_session()
        client.close()


def test_a_hung_server_accepts_and_never_speaks():
    with servers.hung_ssh_server() as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # no banner
        client = paramiko.SSHClient()
        with pytest.raises(paramiko.SSHException, match="banner"):
            client.connect("127.0.0.1", port=port, timeout=5, banner_timeout=1)
        client.close()


def test_the_counting_proxy_counts_each_direction(ssh_cluster, tmp_path):
    host = ssh_cluster.hosts[0]
    with servers.CountingProxy(host.address, host.port) as proxy:
        known_hosts = proxy.write_known_hosts(tmp_path / "known_hosts", host)
        assert known_hosts.read_text().startswith(f"[127.0.0.1]:{proxy.port} ssh-ed25519 ")
        upload = os.urandom(300_000)
        done = subprocess.run(
            ssh(
                ssh_cluster,
                host,
                "cat >/dev/null; head -c 200000 /dev/zero",
                via=proxy,
                known_hosts=known_hosts,
            ),
            input=upload,
            capture_output=True,
            check=True,
        )
        assert len(done.stdout) == 200_000
        proxy.wait_closed()
        assert len(proxy.connections) == 1
        sent, received = proxy.client_to_server, proxy.server_to_client
        assert len(upload) < sent < len(upload) + 50_000
        assert 200_000 < received < 200_000 + 50_000


def test_a_hundred_hosts_start_together_and_stop_cleanly():
    directory = Path(tempfile.mkdtemp(prefix="deploytools-hundred-"))
    try:
        cluster = servers.start_ssh_cluster(directory, servers.loopback_addresses(100, first=10))
        try:
            assert len({(h.address, h.port) for h in cluster.hosts}) == 100
            assert "127.0.0.109" in {h.address for h in cluster.hosts}
            for host in cluster.hosts:
                with socket.create_connection((host.address, host.port), timeout=10) as sock:
                    assert sock.makefile("rb").readline().startswith(b"SSH-2.0-")
            last = cluster.hosts[-1]
            out = subprocess.run(
                ssh(cluster, last, "echo $SSH_CONNECTION"), capture_output=True, text=True
            )
            assert out.stdout.split()[2] == last.address, out.stderr
        finally:
            cluster.stop()
        assert all(host.process.poll() is not None for host in cluster.hosts)
        assert servers.processes_using(directory) == []
    finally:
        servers.remove_tree(directory)


def test_a_failing_sshd_is_reported_with_its_log(tmp_path, monkeypatch):
    broken = tmp_path / "sshd"
    broken.write_text("#!/bin/sh\necho 'sshd: no hostkeys available -- exiting.' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(servers, "SSHD", str(broken))
    with pytest.raises(RuntimeError, match=r"exited with status 1\. Its log:\nsshd: no hostkeys"):
        servers.start_ssh_cluster(tmp_path / "ssh", ("127.0.0.1", "127.0.0.2"))


def test_a_failing_postgres_is_reported_with_its_output():
    directory = Path(tempfile.mkdtemp(prefix="deploytools-pg-"))
    try:
        (directory / "data").mkdir()
        (directory / "data" / "stale").write_text("x")
        with pytest.raises(RuntimeError, match=r"(?s)initdb failed with status 1:.*not empty"):
            servers.start_postgres(directory)
    finally:
        servers.remove_tree(directory)


def test_the_wheelhouse_installs_offline(wheelhouse, tmp_path):
    names = sorted(p.name for p in wheelhouse.glob("tinyapp_dep-*.whl"))
    assert names == ["tinyapp_dep-1.0-py3-none-any.whl", "tinyapp_dep-2.0-py3-none-any.whl"]
    uv = str(Path(sys.executable).parent / "uv")
    env = {**os.environ, "UV_CACHE_DIR": str(tmp_path / "cache"), "UV_NO_CONFIG": "1"}
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], env=env, check=True)

    def install(*requirements: str) -> None:
        offline = ["--offline", "--no-index", "--find-links", wheelhouse]
        subprocess.run(
            [
                uv,
                "pip",
                "install",
                "-q",
                *offline,
                "--python",
                venv / "bin" / "python",
                *requirements,
            ],
            env=env,
            check=True,
        )

    def hello() -> str:
        return subprocess.run(
            [venv / "bin" / "tinyapp-hello"], capture_output=True, text=True, check=True
        ).stdout

    install("deploytools", "tinyapp_dep==1.0")
    assert hello() == "hello from tinyapp_dep 1.0\n"
    imported = subprocess.run(
        [venv / "bin" / "python", "-c", "import deploytools.tasks, psycopg; print(psycopg.pq)"],
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr
    install("tinyapp_dep==2.0")
    assert hello() == "hello from tinyapp_dep 2.0\n"


def test_hand_written_wheels_are_the_same_bytes_every_time(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    one = wheels.write_tinyapp_dep(first, "1.0").read_bytes()
    assert one == wheels.write_tinyapp_dep(second, "1.0").read_bytes()
    assert one != wheels.write_tinyapp_dep(second, "2.0").read_bytes()


def test_leftovers_are_found_and_removed(tmp_path):
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "file").write_text("x")
    stray.chmod(0o555)  # a test that made its root read-only
    sleeper = subprocess.Popen(["sleep", "60"], cwd=stray)
    try:
        assert (sleeper.pid, "sleep 60") in servers.processes_using(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert servers.processes_using(tmp_path) == []
    servers.remove_tree(stray)
    assert not stray.exists()


def test_fleet_passes_env_and_starts_commands_in_their_own_session(app_repo, deploy_dir):
    root = deploy_dir / "local"
    fleet = Fleet(kind="local", entries=["local"], roots={"local": root}, repo=app_repo)
    fleet.extra["root"] = str(root)
    refused = fleet.invoke("setup", env={"INVOKE_DEPLOY_KEEP_RELEASES": "0"})
    assert refused.returncode == 2 and "keep_releases" in refused.stderr
    assert not root.exists()
    assert fleet.invoke("setup").returncode == 0 and root.is_dir()

    process = fleet.start_invoke("--list", env={"COLUMNS": "80"})
    try:
        assert os.getsid(process.pid) == process.pid
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and "deploy" in out


def test_run_temp_dir_is_this_runs_own(no_leftovers):
    assert tempfile.gettempdir() == str(no_leftovers) == os.environ["TMPDIR"]
    assert no_leftovers.name.startswith("deploytools-run-")
