"""Configuration: host specs, per-host overrides, --hosts, validation, and invoke's layering."""

import json
import sys
from pathlib import Path

import pytest
from invoke import Config

from deploytools.config import load_settings
from deploytools.exceptions import ConfigError
from deploytools.tasks import ns


def test_defaults_are_one_local_target_under_dot_deploy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    (target,) = settings.targets
    assert target.is_local and target.root == str(tmp_path / ".deploy")
    assert target.python == sys.executable
    assert settings.keep_releases == 5 and settings.migrate_on == target
    assert settings.known_hosts == Path.home() / ".ssh" / "known_hosts"
    assert settings.accept_new_host_keys is False


def test_host_specs_and_per_host_overrides():
    settings = load_settings(
        {
            "deploy": {
                "hosts": [
                    "deploy@web1.example.com:2222",
                    {"host": "web2", "root": "/srv/other", "python": "/opt/venv/bin/python"},
                    "deploy@[2001:db8::1]:22",
                ],
                "root": "/srv/app",
                "migrate_on": "web2",
            }
        }
    )
    web1, web2, web3 = settings.targets
    assert (web1.user, web1.hostname, web1.port, web1.root) == (
        "deploy",
        "web1.example.com",
        2222,
        "/srv/app",
    )
    assert web1.python == "python3"
    assert (web2.user, web2.hostname, web2.port) == (None, "web2", None)
    assert (web2.root, web2.python) == ("/srv/other", "/opt/venv/bin/python")
    assert web3.hostname == "2001:db8::1"
    assert settings.migrate_on == web2


def test_hosts_flag_picks_configured_hosts_and_keeps_their_overrides():
    config = {"deploy": {"hosts": ["a", {"host": "b", "root": "/b"}], "root": "/srv"}}
    settings = load_settings(config, "b,c")
    assert [(t.name, t.root) for t in settings.targets] == [("b", "/b"), ("c", "/srv")]
    assert settings.migrate_on.name == "b"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"deploy": {"hosts": ["web1"]}}, "set deploy.root"),
        ({"deploy": {"hosts": ["bad host!"], "root": "/r"}}, "not 'user@host"),
        ({"deploy": {"hosts": ["a", "a"], "root": "/r"}}, "twice"),
        ({"deploy": {"hosts": [{"host": "a", "rooot": "/r"}], "root": "/r"}}, "unknown keys"),
        ({"deploy": {"hosts": ["a"], "root": "/r", "migrate_on": "b"}}, "migrate_on"),
        ({"deploy": {"keep_releases": 0}}, "at least 1"),
        ({"deploy": {"shared_dirs": ["../etc"]}}, "without '..'"),
        ({"deploy": {"shared_files": "log"}}, "must be a list"),
        ({"deploy": {"hosts": "web1"}}, "must be a list"),
        ({"deploy": {"accept_new_host_keys": "maybe"}}, "true or false"),
    ],
)
def test_bad_configuration_names_the_key(config, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def _layered(tmp_path, monkeypatch, *, env=None, runtime=None):
    """Load config exactly as the invoke program does: collection, project, runtime, env."""
    (tmp_path / "invoke.yaml").write_text(
        json.dumps(
            {"deploy": {"hosts": ["web1", "web2"], "root": "/from/project", "keep_releases": 3}}
        )
    )
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    config = Config(project_location=str(tmp_path), runtime_path=runtime)
    config.load_collection(ns.configuration())
    config.load_project()
    config.load_runtime()
    config.load_shell_env()
    return load_settings(config)


def test_config_layers_take_precedence_in_invoke_order(tmp_path, monkeypatch):
    project = _layered(tmp_path, monkeypatch)
    assert [t.root for t in project.targets] == ["/from/project"] * 2
    assert project.keep_releases == 3  # project file over the collection default (5)
    assert project.lock_timeout == 60  # collection default where nothing overrides it

    env = _layered(tmp_path, monkeypatch, env={"INVOKE_DEPLOY_ROOT": "/from/env"})
    assert env.targets[0].root == "/from/env"  # environment over project file

    runtime = tmp_path / "runtime.yaml"
    runtime.write_text(json.dumps({"deploy": {"root": "/from/runtime", "keep_releases": 9}}))
    both = _layered(
        tmp_path,
        monkeypatch,
        env={"INVOKE_DEPLOY_KEEP_RELEASES": "7", "INVOKE_DEPLOY_ROOT": "/from/env"},
        runtime=str(runtime),
    )
    # invoke's order: project file < environment < runtime file (-f) < task flags
    assert both.targets[0].root == "/from/runtime"
    assert both.keep_releases == 9
    assert (
        load_settings({"deploy": {"hosts": ["web1", "web2"], "root": "/r"}}, "web2").targets[0].name
        == "web2"
    )  # --hosts, a task flag, over every file


def test_env_var_cannot_set_a_list_and_says_so(tmp_path, monkeypatch):
    from invoke.exceptions import UncastableEnvVar

    with pytest.raises(UncastableEnvVar):
        _layered(tmp_path, monkeypatch, env={"INVOKE_DEPLOY_HOSTS": "a,b"})
