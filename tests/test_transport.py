"""The Transport interface, the same on a local directory and over SSH: output streamed line by
line as it arrives, time limits, commands that leave a daemon holding their output, counts."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from deploytools.config import Settings, load_settings
from deploytools.hosts.transport import NO_LIMIT, Transport, open_transport

LIMIT_KEYS = ("keepalive", "command_timeout")


def limited_settings(hosts: list[Any], **deploy: Any) -> Settings:
    """Settings for ``hosts`` and ``deploy.*`` keys; ``keepalive`` and ``command_timeout`` are
    set on the Settings even while config.py does not read them yet."""
    settings = load_settings({"deploy": {"hosts": hosts, **deploy}})
    limits = {key: deploy[key] for key in LIMIT_KEYS if key in deploy}
    fields = {field.name for field in dataclasses.fields(settings)}
    settings = dataclasses.replace(settings, **{k: v for k, v in limits.items() if k in fields})
    for key, value in limits.items():
        if key not in fields:
            object.__setattr__(settings, key, value)
    return settings


def ssh_settings(cluster, host=None, **deploy: Any) -> Settings:
    """Settings for one sshd host of the test cluster (the first by default)."""
    host = host or cluster.hosts[0]
    return limited_settings(
        [host.spec],
        root="/nonexistent",
        known_hosts=str(cluster.known_hosts),
        identity_file=str(cluster.client_key),
        **deploy,
    )


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(params=["local", "ssh"])
def make_transport(request, deploy_dir):
    """Build a transport (a local directory, or the first sshd host) with deploy.* keys."""
    made: list[Transport] = []

    def make(**deploy: Any) -> Transport:
        if request.param == "local":
            settings = limited_settings(["local"], root=str(deploy_dir / "local"), **deploy)
        else:
            settings = ssh_settings(request.getfixturevalue("ssh_cluster"), **deploy)
        transport = open_transport(settings.targets[0], settings)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


def test_lines_reach_on_line_while_the_command_still_runs(make_transport, deploy_dir):
    """The command waits for a file that only the callback creates, once it has seen the
    first line: it can only finish if that line was delivered before the command ended."""
    transport = make_transport()
    flag = deploy_dir / "seen-first"
    seen: list[tuple[str, str]] = []

    def on_line(stream: str, line: str) -> None:
        seen.append((stream, line))
        if line == "first":
            flag.touch()

    script = f"echo first; while [ ! -e '{flag}' ]; do sleep 0.02; done; echo second"
    result = transport.run_script(script, timeout=30, on_line=on_line)
    assert result.ok and not result.timed_out and not result.held_open
    assert seen == [("stdout", "first"), ("stdout", "second")]
    assert result.stdout == "first\nsecond\n"


def test_streams_are_kept_apart_and_the_last_line_needs_no_newline(make_transport):
    transport = make_transport()
    lines: list[tuple[str, str]] = []
    script = "echo out1; echo err1 >&2; printf 'h\\303\\251 \\377\\n'; printf 'tail'; exit 3"
    result = transport.run_script(script, on_line=lambda stream, line: lines.append((stream, line)))
    assert result.exit_code == 3 and not result.ok and not result.connection_lost
    assert result.stdout == "out1\nhé \ufffd\ntail"
    assert result.stderr == "err1\n"
    assert [line for stream, line in lines if stream == "stdout"] == ["out1", "hé \ufffd", "tail"]
    assert [line for stream, line in lines if stream == "stderr"] == ["err1"]


def test_a_command_past_its_timeout_is_ended_with_its_output_so_far(make_transport):
    transport = make_transport()
    result = transport.run_script("echo $$; echo before; exec sleep 60", timeout=1)
    pid = int(result.stdout.split()[0])
    try:
        assert result.timed_out and result.exit_code is None
        assert not result.connection_lost and not result.ok
        assert result.stdout.endswith("before\n")
    finally:
        kill(pid)  # over SSH the command may still run on the host


def test_the_local_timeout_kills_the_process_group_it_started(deploy_dir):
    settings = limited_settings(["local"], root=str(deploy_dir / "local"))
    transport = open_transport(settings.targets[0], settings)
    result = transport.run_script("sleep 60 & echo $!; wait", timeout=1)
    assert result.timed_out
    child = int(result.stdout.split()[0])
    assert ended(child), "the background sleep survived the timeout"


def ended(pid: int, within: float = 10.0) -> bool:
    """Whether ``pid`` is gone (or a zombie awaiting its reaper); a killed process takes a
    moment to die."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_command_timeout_is_the_default_limit_and_no_limit_lifts_it(make_transport):
    transport = make_transport(command_timeout=1)
    assert transport.run_script("exec sleep 60").timed_out
    result = transport.run_script("sleep 1.5; echo done", timeout=NO_LIMIT)
    assert result.ok and result.stdout == "done\n"


def test_a_daemon_holding_the_output_does_not_hang_the_command(make_transport):
    """``sleep & echo`` exits at once, but the background sleep keeps stdout open: the result
    comes back after a short grace with the exit status and held_open."""
    transport = make_transport()
    result = transport.run_script("sleep 60 & echo started $!; exit 5", timeout=30)
    pid = int(result.stdout.split()[1])
    try:
        assert result.held_open and not result.timed_out
        assert result.exit_code == 5 and not result.connection_lost
        assert result.stdout.startswith("started ")
    finally:
        kill(pid)
    # the transport is still usable afterwards
    assert transport.run_script("echo next").stdout == "next\n"


def test_output_written_after_the_exit_is_still_collected(make_transport):
    """A child that goes on writing after the shell exited is waited for while it writes."""
    transport = make_transport()
    script = "(for i in 1 2 3 4 5 6; do sleep 0.3; echo tick$i; done) & exit 0"
    result = transport.run_script(script, timeout=30)
    assert result.ok and not result.held_open
    assert result.stdout.split() == [f"tick{i}" for i in range(1, 7)]


def test_an_exception_in_on_line_is_raised_after_the_command(make_transport):
    transport = make_transport()

    def on_line(stream: str, line: str) -> None:
        raise ValueError(f"cannot show {line}")

    with pytest.raises(ValueError, match="cannot show one"):
        transport.run_script("echo one; echo two", on_line=on_line)
    assert transport.run_script("echo again").stdout == "again\n"


def test_counts_commands_connections_and_bytes(make_transport, deploy_dir):
    transport = make_transport()
    payload = deploy_dir / "payload.bin"
    payload.write_bytes(os.urandom(1 << 20))
    remote = deploy_dir / "copied.bin"
    before = transport.bytes_sent
    progress: list[tuple[int, int]] = []
    transport.put(payload, str(remote), lambda sent, total: progress.append((sent, total)))
    assert remote.read_bytes() == payload.read_bytes()
    assert progress[-1] == (1 << 20, 1 << 20)
    assert transport.bytes_sent - before >= 1 << 20
    assert transport.commands == 0  # an SFTP session is not a command
    for _ in range(3):
        assert transport.run_script("true").ok
    assert transport.commands == 3
    local = transport.target.hostname is None
    assert transport.connections == (0 if local else 1)
    if local:
        assert transport.bytes_sent == 1 << 20


def test_ssh_reconnect_opens_a_new_connection_and_keeps_counting(ssh_cluster):
    settings = ssh_settings(ssh_cluster)
    transport = open_transport(settings.targets[0], settings)
    try:
        assert transport.run_script("true").ok
        sent = transport.bytes_sent
        assert sent > 0
        transport.reconnect()
        closed = transport.bytes_sent  # the bytes of the first connection stay counted
        assert closed >= sent
        assert transport.run_script("true").ok
        assert transport.connections == 2 and transport.bytes_sent > closed
    finally:
        transport.close()


def test_ssh_a_command_killed_by_a_signal_is_a_failure_not_a_lost_connection(ssh_cluster):
    settings = ssh_settings(ssh_cluster)
    transport = open_transport(settings.targets[0], settings)
    try:
        result = transport.run_script("echo dying; kill -KILL $$")
        assert not result.ok and not result.connection_lost and not result.timed_out
        assert result.stdout == "dying\n"
        assert "without an exit status" in result.stderr
    finally:
        transport.close()
