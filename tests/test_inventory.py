"""Ansible inventories as the source of hosts: INI and YAML files with group and host variables
and children groups, Ansible's --limit patterns, roles, the missing extra, and a deploy to the
suite's sshd hosts described by an inventory."""

import json
import os
import pwd
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fleet import Fleet

from deploytools.config import load_settings
from deploytools.exceptions import ConfigError

pytest.importorskip("ansible", reason="the ansible extra (ansible-core) is not installed")

INI = """
[web]
web1 ansible_host=10.0.0.1 ansible_port=2201
web2 ansible_host=10.0.0.2 deploy_root=/srv/web2

[worker]
worker1 ansible_host=10.0.0.3 ansible_user=jobs

[db]
db1 ansible_host=10.0.0.4

[production:children]
web
worker

[tryout]
laptop ansible_connection=local deploy_root=./tryout

[web:vars]
deploy_restart=["sudo systemctl reload app-web", "true"]
deploy_health=curl -fs localhost/health

[all:vars]
ansible_user=deploy
deploy_root=/srv/app
ansible_ssh_private_key_file=~/.ssh/deploy_key
"""

YAML = """
all:
  vars:
    deploy_root: /srv/app
    ansible_user: deploy
  children:
    production:
      children:
        web:
          hosts:
            web1: {ansible_host: 10.0.0.1, ansible_port: 2201}
            web2: {ansible_host: 10.0.0.2}
          vars:
            deploy_restart: [sudo systemctl reload app-web]
        worker:
          hosts:
            worker1: {ansible_host: 10.0.0.3}
    db:
      hosts:
        db1:
          ansible_host: 10.0.0.4
          deploy_python: /srv/venv/bin/python
"""


def write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def settings_for(inventory, hosts_flag=None, **deploy):
    return load_settings({"deploy": {"inventory": str(inventory), **deploy}}, hosts_flag)


def test_ini_inventory_with_group_and_host_vars(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path / "inventory",
        {
            "hosts": INI,  # no .ini: older ansible-core skips *.ini inside a directory
            # beside the inventory, as ansible-playbook reads them
            "group_vars/worker.yml": """
                deploy_restart: [sudo systemctl restart app-worker]
                deploy_python: /srv/venv/bin/python
            """,
            "host_vars/web1.yml": 'deploy_root: "/srv/{{ inventory_hostname }}"\n',
        },
    )
    settings = settings_for(tmp_path / "inventory")
    by_name = {t.name: t for t in settings.targets}
    # Ansible's order, as `ansible all --list-hosts` shows it (groups['all'])
    assert list(by_name) == ["db1", "laptop", "web1", "web2", "worker1"]
    db, laptop, web1, web2, worker = settings.targets

    assert (web1.hostname, web1.port, web1.user) == ("10.0.0.1", 2201, "deploy")
    assert web1.root == "/srv/web1"  # host_vars, templated as Ansible does
    assert web1.identity_file == "~/.ssh/deploy_key"  # ansible_ssh_private_key_file
    assert web1.roles == ("web", "production")  # groups but all/ungrouped
    assert web1.restart == ("sudo systemctl reload app-web", "true")  # [web:vars]
    assert web1.health == ("curl -fs localhost/health",)  # a string: one command
    assert web1.python is None and web1.runner_python == "python3"

    assert (web2.root, web2.port) == ("/srv/web2", None)  # a host var over [all:vars]
    assert (worker.user, worker.roles) == ("jobs", ("worker", "production"))
    assert worker.restart == ("sudo systemctl restart app-worker",)  # group_vars/worker.yml
    assert worker.python == "/srv/venv/bin/python"
    assert (db.root, db.restart, db.roles) == ("/srv/app", (), ("db",))
    assert laptop.is_local and laptop.root == str(tmp_path / "tryout")

    assert settings.migrate_on == db  # the first host
    assert settings_for(tmp_path / "inventory", migrate_on="worker").migrate_on == worker


def test_yaml_inventory_with_children_groups_and_deploy_wide_defaults(tmp_path):
    write(tmp_path, {"production.yml": YAML})
    settings = settings_for(
        tmp_path / "production.yml",
        restart=["sudo systemctl restart app"],
        identity_file="/keys/deploy",
        migrate_on="db",  # a role: its first host
    )
    db, web1, _web2, worker = settings.targets
    assert [t.name for t in settings.targets] == ["db1", "web1", "web2", "worker1"]
    assert (web1.hostname, web1.port, web1.user, web1.root) == (
        "10.0.0.1",
        2201,
        "deploy",
        "/srv/app",
    )
    assert web1.roles == ("web", "production")
    assert web1.restart == ("sudo systemctl reload app-web",)  # group var over deploy.restart
    assert worker.restart == ("sudo systemctl restart app",)  # deploy.restart
    assert worker.identity_file == "/keys/deploy"  # deploy.identity_file
    assert db.python == "/srv/venv/bin/python"
    assert settings.migrate_on == db


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("web", ["web1", "web2"]),
        ("production:&web", ["web1", "web2"]),
        ("production:!web2", ["web1", "worker1"]),
        ("all:!production", ["db1"]),
        ("web1,db1", ["db1", "web1"]),
        ("web[1]:worker*", ["web2", "worker1"]),  # Ansible's slices (0-based) and globs
    ],
)
def test_limit_takes_ansibles_patterns(tmp_path, pattern, names):
    write(tmp_path, {"production.yml": YAML})
    settings = load_settings(
        {"deploy": {"inventory": str(tmp_path / "production.yml"), "migrate_on": "db"}},
        limit=pattern,
    )
    assert [t.name for t in settings.targets] == names
    assert [t.name for t in settings.fleet] == ["db1", "web1", "web2", "worker1"]
    assert settings.migrate_on.name == "db1"  # check and migrate still run there
    assert settings.limited


def test_limit_mistakes_and_hosts_flag_with_an_inventory(tmp_path):
    write(tmp_path, {"production.yml": YAML})
    inventory = tmp_path / "production.yml"
    with pytest.raises(ConfigError, match=r"'dbb' matches no host or group .* groups: db, "):
        load_settings({"deploy": {"inventory": str(inventory)}}, limit="all:!dbb")
    with pytest.raises(ConfigError, match="leaves no host"):
        load_settings({"deploy": {"inventory": str(inventory)}}, limit="web:&worker")
    limited = load_settings(
        {"deploy": {"inventory": str(inventory), "limit": "production"}}, "web2,db1"
    )
    assert [t.name for t in limited.targets] == ["web2"]  # --hosts, then deploy.limit
    with pytest.raises(ConfigError, match="web3 is not a configured host; hosts: db1, web1"):
        settings_for(inventory, "web3")


def test_inventory_mistakes_are_exit_2(tmp_path):
    write(
        tmp_path,
        {
            "production.yml": YAML,
            "empty.ini": "# no hosts yet\n",
            "undefined.yml": "all:\n  hosts:\n    h1: {deploy_root: '{{ nowhere }}'}\n",
            "badport.ini": "h1 ansible_port=ssh deploy_root=/r\n",
            "noroot.ini": "h1\n",
        },
    )
    cases = [
        ({"inventory": str(tmp_path / "missing.ini")}, "missing.ini does not exist"),
        ({"inventory": str(tmp_path / "empty.ini")}, "has no hosts"),
        ({"inventory": str(tmp_path / "undefined.yml")}, "inventory host h1: deploy_root"),
        ({"inventory": str(tmp_path / "badport.ini")}, "ansible_port 'ssh' is not a number"),
        ({"inventory": str(tmp_path / "noroot.ini")}, "deploy_root inventory variable"),
        (
            {"inventory": str(tmp_path / "production.yml"), "hosts": ["local"]},
            "set deploy.hosts or deploy.inventory, not both",
        ),
        ({"inventory": str(tmp_path / "production.yml"), "migrate_on": "cache"}, "roles: db, "),
    ]
    for deploy, message in cases:
        with pytest.raises(ConfigError, match=message) as raised:
            load_settings({"deploy": deploy})
        assert raised.value.exit_code == 2


def test_a_stage_chooses_an_inventory_over_the_top_level_hosts(tmp_path):
    write(tmp_path, {"production.yml": YAML})
    config = {
        "deploy": {
            "hosts": ["local"],
            "root": str(tmp_path / "tryout"),
            "stages": {"production": {"inventory": str(tmp_path / "production.yml")}},
        }
    }
    assert [t.name for t in load_settings(config).targets] == ["local"]
    production = load_settings(config, stage="production")
    assert [t.name for t in production.targets] == ["db1", "web1", "web2", "worker1"]
    # the stage does not set root: the inventory's deploy_root wins over the top level's root
    assert production.targets[0].root == "/srv/app"


def test_without_ansible_core_an_inventory_says_how_to_install_it(tmp_path):
    write(tmp_path, {"production.yml": YAML})
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["ansible"] = None  # as if ansible-core were not installed
        from deploytools.config import load_settings
        from deploytools.exceptions import ConfigError
        try:
            load_settings({{"deploy": {{"inventory": {str(tmp_path / "production.yml")!r}}}}})
        except ConfigError as error:
            print(error.exit_code, error)
        settings = load_settings({{"deploy": {{"hosts": ["local"]}}}}, limit="local")
        print("without an inventory:", [t.name for t in settings.targets])
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    first, second = completed.stdout.splitlines()
    assert first.startswith("2 ") and "production.yml" in first
    assert "install the ansible extra: pip install 'deploytools[ansible]'" in first
    assert second == "without an inventory: ['local']"  # patterns need no ansible-core


def test_deploy_to_the_hosts_of_an_inventory(ssh_cluster, deploy_dir, app_repo):
    """An inventory naming the suite's sshd hosts by alias: setup and deploy reach every one."""
    from deploytools.admin import setup
    from deploytools.deploy import deploy

    user = pwd.getpwuid(os.geteuid()).pw_name
    roots = {f"app{n}": deploy_dir / f"inv{n}" / "app" for n in (1, 2, 3)}
    hosts = {
        name: {"ansible_host": host.address, "ansible_port": host.port}
        for name, host in zip(roots, ssh_cluster.hosts, strict=True)
    }
    inventory = {
        "all": {
            "vars": {
                "ansible_user": user,
                "ansible_ssh_private_key_file": str(ssh_cluster.client_key),
            },
            "children": {
                "web": {"hosts": {name: hosts[name] for name in ("app1", "app2")}},
                "worker": {"hosts": {"app3": hosts["app3"]}},
            },
        }
    }
    (deploy_dir / "inventory").mkdir()
    (deploy_dir / "inventory" / "hosts.yml").write_text(json.dumps(inventory))
    write(
        deploy_dir / "inventory",
        {f"host_vars/{name}.yml": f"deploy_root: {root}\n" for name, root in roots.items()},
    )
    settings = load_settings(
        {
            "deploy": {
                "inventory": str(deploy_dir / "inventory"),
                "repo": str(app_repo.path),
                "known_hosts": str(ssh_cluster.known_hosts),
                "migrate_on": "worker",
            }
        }
    )
    assert [(t.name, t.hostname, t.user) for t in settings.targets] == [
        (name, host.address, user) for name, host in zip(roots, ssh_cluster.hosts, strict=True)
    ]
    assert settings.migrate_on.name == "app3"

    assert setup(settings) == {name: str(root) for name, root in roots.items()}
    result = deploy(settings)
    assert result.status == "succeeded"
    fleet = Fleet(kind="ssh", entries=[], roots=roots, repo=app_repo)
    assert fleet.currents() == dict.fromkeys(roots, result.release)
    for name in roots:
        assert (roots[name] / "current" / "app.py").read_text() == "VERSION = 0\n"
        assert [r["status"] for r in fleet.revisions(name)] == ["succeeded"]
