"""Time limits of the SSH transport against the suite's real sshd: a host that never sends its
banner, a host that stops answering mid-command (SIGSTOP on its session process), and an SFTP
upload that stops moving."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import paramiko
import pytest
from test_transport import limited_settings, ssh_settings

from deploytools.exceptions import TransportError
from deploytools.hosts.transport import open_transport


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    found = []
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    for child in map(int, out.split()):
        found += [child, *descendants(child)]
    return found


def title(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return ""


@contextlib.contextmanager
def stopped(pids: list[int]):
    """SIGSTOP ``pids`` for the block, SIGCONT afterwards whatever happened."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def sshd_processes_of_session(host, before: set[int]) -> list[int]:
    """The sshd processes serving the connection opened since ``before`` was taken: as root
    the listener's new child; as another user also the ``user@notty`` child of that monitor
    (TESTING.md). The commands they run are left alone."""
    new = set(host.session_pids()) - before  # as another user: the monitor and its child
    assert new, "no sshd process serves the new connection"
    found = set(new)
    for pid in new:
        found.update(p for p in descendants(pid) if title(p).startswith("sshd:"))
    return sorted(found)


def test_a_host_that_never_sends_a_banner_fails_within_connect_timeout(ssh_cluster):
    """A port that accepts TCP and never speaks: the error names the banner and the port,
    and paramiko's thread does not stay behind."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        settings = limited_settings(
            [f"root@127.0.0.1:{port}"],
            root="/srv/app",
            known_hosts=str(ssh_cluster.known_hosts),
            connect_timeout=1,
        )
        before = set(threading.enumerate())
        transport = open_transport(settings.targets[0], settings)
        with pytest.raises(TransportError) as raised:
            transport.run_script("true")
        transport.close()
        message = str(raised.value)
        assert f"SSH to root@127.0.0.1:{port}: no SSH banner within 1 s" in message
        assert f"is sshd running on port {port}?" in message
        left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
        assert not any(isinstance(t, paramiko.Transport) for t in left)
        assert left == []


def test_a_closed_port_is_reported_as_unreachable(ssh_cluster):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections are refused
        settings = limited_settings(
            [f"root@127.0.0.1:{port}"], root="/srv/app", known_hosts=str(ssh_cluster.known_hosts)
        )
        transport = open_transport(settings.targets[0], settings)
        with pytest.raises(TransportError, match=f"cannot reach .*127.0.0.1 port {port}"):
            transport.run_script("true")


def test_a_host_that_stops_answering_mid_command_is_a_lost_connection(ssh_cluster):
    """SIGSTOP on the session's sshd during a long command: the keepalives go unanswered and
    the command returns as lost, naming the host, long before the command would end."""
    host = ssh_cluster.hosts[1]
    settings = ssh_settings(ssh_cluster, host, keepalive=1)
    transport = open_transport(settings.targets[0], settings)
    before = set(host.session_pids())
    assert transport.run_script("true").ok  # connected
    session = sshd_processes_of_session(host, before)
    started = threading.Event()
    pids: list[int] = []

    def on_line(stream: str, line: str) -> None:
        pids.append(int(line))
        started.set()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            transport.run_script, "echo $$; exec sleep 120", timeout=300, on_line=on_line
        )
        assert started.wait(30)
        try:
            with stopped(session):
                result = running.result(timeout=60)  # the sleep alone would take 120 s
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert result.connection_lost and result.exit_code is None and not result.timed_out
    assert f"{host.spec} stopped answering" in result.stderr
    assert "keepalive" in result.stderr
    # the next command connects again
    assert transport.run_script("echo back").stdout == "back\n"
    assert transport.connections == 2
    transport.close()


def test_keepalives_keep_a_quiet_command_alive(ssh_cluster):
    """A command silent for several keepalive intervals is not mistaken for a dead host."""
    settings = ssh_settings(ssh_cluster, keepalive=0.5)
    transport = open_transport(settings.targets[0], settings)
    try:
        result = transport.run_script("sleep 3; echo done")
        assert result.ok and result.stdout == "done\n"
        assert transport.connections == 1
    finally:
        transport.close()


def test_an_upload_that_stops_moving_fails_after_command_timeout(ssh_cluster, deploy_dir):
    """The SFTP server process of the session is stopped (the session itself still answers
    keepalives): the upload fails once no byte moved for command_timeout seconds."""
    host = ssh_cluster.hosts[2]
    settings = ssh_settings(ssh_cluster, host, command_timeout=1)
    transport = open_transport(settings.targets[0], settings)
    small, large = deploy_dir / "small", deploy_dir / "large"
    small.write_bytes(b"x")
    large.write_bytes(os.urandom(16 << 20))
    before = set(host.session_pids())
    transport.put(small, str(deploy_dir / "small.copy"))  # opens the SFTP session
    new = set(host.session_pids()) - before  # the session's sshd processes (and children)
    sftp = sorted({pid for s in new for pid in (s, *descendants(s)) if "sftp" in title(pid)})
    assert sftp, "no SFTP server process found"
    try:
        with stopped(sftp), pytest.raises(TransportError) as raised:
            transport.put(large, str(deploy_dir / "large.copy"))
        assert f"uploading to {host.spec}:{deploy_dir / 'large.copy'} failed" in str(raised.value)
        assert "no progress for 1 s" in str(raised.value)
        # the connection itself is fine: commands and a new SFTP session work
        assert transport.run_script("echo fine").stdout == "fine\n"
        transport.put(small, str(deploy_dir / "small.again"))
        assert (deploy_dir / "small.again").read_bytes() == b"x"
        assert transport.connections == 1
    finally:
        transport.close()
