"""SSH as an OpenSSH user expects it: ~/.ssh/config aliases, ssh-agent, identity files."""

from __future__ import annotations

import os
import pwd
import subprocess
import threading

import paramiko
import pytest

from deploytools.deploy import deploy
from deploytools.exceptions import TransportError


def test_ssh_config_alias_with_its_own_hostname_port_user_and_key(
    ssh_fleet, ssh_cluster, no_user_ssh
):
    host = ssh_cluster.hosts[1]
    ssh_dir = no_user_ssh / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "config").write_text(
        "Host web-alias\n"
        f"    HostName {host.address}\n"
        f"    Port {host.port}\n"
        f"    User {pwd.getpwuid(os.geteuid()).pw_name}\n"
        f"    IdentityFile {ssh_cluster.client_key}\n"
    )
    config = ssh_fleet.config()
    config["deploy"].pop("identity_file")  # the key comes from ~/.ssh/config alone
    root = ssh_fleet.roots[host.spec]
    config["deploy"]["hosts"] = [{"host": "web-alias", "root": str(root)}]
    from deploytools.config import load_settings

    result = deploy(load_settings(config))
    assert result.hosts[0]["host"] == "web-alias" and result.hosts[0]["connections"] == 1
    assert os.readlink(root / "current") == f"releases/{result.release}"


def test_ssh_agent_supplies_the_key(ssh_fleet, ssh_cluster, monkeypatch, tmp_path):
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if socket_path.exists():
                break
            subprocess.run(["sleep", "0.01"])
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        subprocess.run(
            ["ssh-add", "-q", str(ssh_cluster.client_key)], check=True, capture_output=True
        )
        result = deploy(ssh_fleet.settings(identity_file=None))
        assert result.status == "succeeded"
        assert set(ssh_fleet.currents().values()) == {result.release}
    finally:
        agent.terminate()
        agent.wait()


def test_without_a_usable_key_authentication_fails_clearly(ssh_fleet):
    before = ssh_fleet.snapshot()
    with pytest.raises(TransportError, match="authentication as ") as raised:
        deploy(ssh_fleet.settings(identity_file=None))
    assert "deploy.identity_file" in str(raised.value)
    assert ssh_fleet.snapshot() == before


def _through_a_jump_host(ssh_fleet, ssh_cluster, no_user_ssh, known_hosts):
    target, jump = ssh_cluster.hosts[0], ssh_cluster.hosts[1]
    user = pwd.getpwuid(os.geteuid()).pw_name
    ssh_dir = no_user_ssh / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "config").write_text(
        "Host behind-the-jump\n"
        f"    HostName {target.address}\n"
        f"    Port {target.port}\n"
        f"    User {user}\n"
        f"    ProxyJump {user}@{jump.address}:{jump.port}\n"
        "Host *\n"
        f"    IdentityFile {ssh_cluster.client_key}\n"
    )
    config = ssh_fleet.config()
    config["deploy"]["known_hosts"] = str(known_hosts)
    root = ssh_fleet.roots[target.spec]
    config["deploy"]["hosts"] = [{"host": "behind-the-jump", "root": str(root)}]
    from deploytools.config import load_settings

    return load_settings(config), root


def test_a_jump_host_is_used_and_its_key_checked_too(ssh_fleet, ssh_cluster, no_user_ssh, tmp_path):
    threads_before = set(threading.enumerate())
    settings, root = _through_a_jump_host(
        ssh_fleet, ssh_cluster, no_user_ssh, ssh_cluster.known_hosts
    )
    result = deploy(settings)
    assert os.readlink(root / "current") == f"releases/{result.release}"

    # the jump host's key unknown: refused, whatever the final host's key is
    jump = ssh_cluster.hosts[1]
    only_target = tmp_path / "known_hosts"
    only_target.write_text(
        "".join(
            line + "\n"
            for line in ssh_cluster.known_hosts.read_text().splitlines()
            if not line.startswith(jump.known_hosts_name)
        )
    )
    settings, root = _through_a_jump_host(ssh_fleet, ssh_cluster, no_user_ssh, only_target)
    ssh_fleet.repo.bump()
    before = os.readlink(root / "current")
    with pytest.raises(TransportError, match=r"is not in .*known_hosts"):
        deploy(settings)
    assert os.readlink(root / "current") == before
    assert only_target.read_text().count(jump.address) == 0  # nothing was recorded
    # both connections through the jump host closed, the refused one too
    left = [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    assert not [t for t in left if isinstance(t, paramiko.Transport)]
