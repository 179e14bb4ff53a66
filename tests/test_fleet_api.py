"""``deploytools.fleet``: the configured hosts as a Fabric group for a project's own tasks, with
the deploy's connection settings (host keys, identity, timeouts, keepalive, TCP_NODELAY)."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path

import invoke
import pytest
from fabric import GroupResult
from fabric.exceptions import GroupException

from deploytools.config import Target, load_settings
from deploytools.exceptions import ConfigError, TransportError
from deploytools.hosts.fleet import fleet_group


def context(cluster, **deploy) -> invoke.Context:
    """An invoke context whose config lists the three sshd hosts, as a user's invoke.yaml would."""
    config = {
        "hosts": [host.spec for host in cluster.hosts],
        "root": "/srv/app",
        "known_hosts": str(cluster.known_hosts),
        "identity_file": str(cluster.client_key),
        **deploy,
    }
    return invoke.Context(config=invoke.Config(overrides={"deploy": config}))


def test_fleet_runs_a_command_on_every_host(ssh_cluster):
    from deploytools import fleet

    with fleet(context(ssh_cluster)) as group:
        result = group.run("hostname -I || true; echo $SSH_CONNECTION", hide=True)
        assert isinstance(result, GroupResult) and len(result) == 3
        assert all(each.ok for each in result.values())
        # each answer came from its own host: sshd reports the address it was reached on
        for connection, each in result.items():
            assert each.stdout.split()[-2] == connection.host
        # the deploy's own connections: our socket, with Nagle off
        for connection in group:
            sock = connection.transport.sock
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_fleet_refuses_an_unknown_host_key(ssh_cluster, tmp_path):
    from deploytools import fleet

    empty = tmp_path / "known_hosts"
    empty.touch()
    group = fleet(context(ssh_cluster, known_hosts=str(empty)))
    with group, pytest.raises(GroupException) as raised:
        group.run("true", hide=True)
    errors = list(raised.value.result.values())
    assert len(errors) == 3
    assert all(isinstance(error, TransportError) for error in errors)
    assert all("is not in" in str(error) for error in errors)
    assert empty.read_text() == ""


def test_fleet_records_new_host_keys_when_the_deploy_would(ssh_cluster, tmp_path):
    from deploytools import fleet

    known = tmp_path / "known_hosts"
    c = context(ssh_cluster, known_hosts=str(known), accept_new_host_keys=True)
    with fleet(c) as group:
        assert all(each.ok for each in group.run("true", hide=True).values())
    assert len(known.read_text().splitlines()) == 3


def test_hosts_selects_by_name(ssh_cluster):
    from deploytools import fleet

    first = ssh_cluster.hosts[0]
    with fleet(context(ssh_cluster), hosts=first.spec) as group:
        assert [connection.host for connection in group] == [first.address]


def test_role_selects_the_hosts_that_have_it(ssh_cluster):
    if "roles" not in {field.name for field in dataclasses.fields(Target)}:
        pytest.skip("config.Target has no roles yet: deploy.hosts cannot give hosts roles")
    settings = load_settings(context(ssh_cluster).config)
    web, worker, both = settings.targets
    settings = dataclasses.replace(
        settings,
        targets=(
            dataclasses.replace(web, roles=("web",)),
            dataclasses.replace(worker, roles=("worker",)),
            dataclasses.replace(both, roles=("web", "worker")),
        ),
    )
    with fleet_group(settings, role="web") as group:
        assert [connection.host for connection in group] == [
            ssh_cluster.hosts[0].address,
            ssh_cluster.hosts[2].address,
        ]
        assert all(each.ok for each in group.run("true", hide=True).values())
    with pytest.raises(ConfigError, match=r"'db'.*roles are: web, worker"):
        fleet_group(settings, role="db")


def test_an_unknown_role_names_what_to_do(ssh_cluster):
    settings = load_settings(context(ssh_cluster).config)
    with pytest.raises(ConfigError, match="no host has the role 'web'") as raised:
        fleet_group(settings, role="web")
    if not any(getattr(target, "roles", ()) for target in settings.targets):
        assert "give hosts `roles` in deploy.hosts" in str(raised.value)


def test_the_local_target_is_refused_with_what_to_use_instead(tmp_path):
    from deploytools import fleet

    c = invoke.Context(
        config=invoke.Config(overrides={"deploy": {"hosts": ["local"], "root": str(tmp_path)}})
    )
    with pytest.raises(ConfigError, match=r"'local' is a directory on this machine: use c\.run"):
        fleet(c)


def test_importing_deploytools_does_not_load_fabric():
    code = (
        "import sys, deploytools\n"
        "assert 'fabric' not in sys.modules and 'paramiko' not in sys.modules\n"
        "from deploytools import fleet\n"
        "assert callable(fleet) and 'fabric' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def readme_tasks() -> str:
    """The ``tasks.py`` of the README's "Custom tasks on the same fleet" section."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Custom tasks on the same fleet", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_tasks_run_on_the_fleet(ssh_cluster, tmp_path):
    has_roles = "roles" in {field.name for field in dataclasses.fields(Target)}
    hosts: list = [host.spec for host in ssh_cluster.hosts]
    if has_roles:
        hosts = [
            {"host": spec, "roles": ["web"] if i < 2 else ["worker"]}
            for i, spec in enumerate(hosts)
        ]
    (tmp_path / "tasks.py").write_text(readme_tasks())
    config = {
        "deploy": {
            "hosts": hosts,
            "root": "/srv/app",
            "known_hosts": str(ssh_cluster.known_hosts),
            "identity_file": str(ssh_cluster.client_key),
        }
    }
    (tmp_path / "invoke.yaml").write_text(json.dumps(config))

    def invoke_cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    out = invoke_cli("sh", "echo $SSH_CONNECTION")
    for host in ssh_cluster.hosts:
        assert f"{host.address}: " in out
    first = ssh_cluster.hosts[0]
    assert invoke_cli("sh", "echo hi", "--hosts", first.spec) == f"{first.address}: hi\n"
    if has_roles:  # journalctl may find no journal here: its exit status is shown, not raised
        out = invoke_cli("logs", "--lines", "5")
        assert [line.split()[1] for line in out.splitlines() if line.startswith("== ")] == [
            host.address for host in ssh_cluster.hosts[:2]
        ]
