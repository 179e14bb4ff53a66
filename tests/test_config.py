"""Configuration: defaults, host specs, per-host values, --hosts / --limit, stages, validation of
every key, and invoke's layering (the environment itself is in test_config_env.py)."""

import json
import re
import sys
from pathlib import Path

import pytest
from invoke import Config

from deploytools.config import DEFAULTS, Target, load_settings, migrations_folder, with_targets
from deploytools.exceptions import ConfigError
from deploytools.tasks import ns

README = Path(__file__).resolve().parent.parent / "README.md"
SSH = {"hosts": ["deploy@web1", "deploy@web2"], "root": "/srv/app"}


def settings_of(hosts_flag=None, *, datamig=None, **deploy):
    return load_settings({"deploy": deploy, "datamig": datamig or {}}, hosts_flag)


def test_a_local_target_when_written_and_the_documented_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"deploy": {"hosts": ["local"]}})
    (target,) = settings.targets
    assert target.is_local and target.root == str(tmp_path / ".deploy")
    assert target.python is None and target.runner_python == sys.executable
    assert settings.fleet == settings.targets and settings.migrate_on == target
    assert not settings.limited and settings.stage is None
    assert settings.repo == tmp_path
    assert settings.known_hosts == Path.home() / ".ssh" / "known_hosts"
    assert settings.accept_new_host_keys is False
    assert (settings.keep_releases, settings.shared_files, settings.shared_dirs) == (5, (), ())
    assert (settings.connect_timeout, settings.keepalive, settings.command_timeout) == (10, 15, 600)
    assert (settings.venv, settings.requirements, settings.installer) == ("auto", None, "auto")
    assert (settings.install_args, settings.venv_python) == ((), "python3")
    assert (settings.build, settings.before_switch) == ((), ())
    assert (target.restart, target.health, settings.health_timeout) == ((), (), 30)
    assert (settings.restart_batch, settings.restart_batch_percent) == (None, None)
    assert (settings.migrations_path, settings.migrations_path_explicit) == ("migrations", False)
    assert (settings.datamig_timeout, settings.lock_timeout) == (None, 60)
    assert (settings.statement_timeout, settings.pg_lock_timeout) == (None, None)
    assert settings.revert_on_rollback is False


@pytest.mark.parametrize(
    ("deploy", "message"),
    [
        ({}, "set deploy.hosts"),
        (
            {"hots": ["web1"], "root": "/r"},
            r"deploy.hots is not a known key; did you mean deploy.hosts\?",
        ),
        ({"hosts": [], "root": "/r"}, "deploy.hosts is empty"),
        ({"hosts": None}, "set deploy.hosts"),
    ],
)
def test_hosts_must_be_written_a_typo_is_not_a_local_target(deploy, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({"deploy": deploy})


def test_host_specs_and_per_host_values():
    settings = settings_of(
        hosts=[
            "deploy@web1.example.com:2222",
            {
                "host": "web2",
                "root": "/srv/other",
                "python": "/opt/venv/bin/python",
                "roles": ["web", "primary"],
                "restart": "systemctl restart web",
                "health": ["curl -fs localhost/health"],
            },
            "deploy@[2001:db8::1]:22",
            {"host": "worker1", "roles": "worker", "restart": ["systemctl restart worker"]},
        ],
        root="/srv/app",
        migrate_on="web2",
        restart=["systemctl restart app"],
        health_cmd="true",
    )
    web1, web2, web3, worker = settings.targets
    assert (web1.user, web1.hostname, web1.port, web1.root) == (
        "deploy",
        "web1.example.com",
        2222,
        "/srv/app",
    )
    assert web1.python is None and web1.runner_python == "python3"
    assert (web1.restart, web1.health, web1.roles) == (("systemctl restart app",), ("true",), ())
    assert (web2.user, web2.hostname, web2.port) == (None, "web2", None)
    assert (web2.root, web2.python) == ("/srv/other", "/opt/venv/bin/python")
    assert web2.roles == ("web", "primary")
    assert web2.restart == ("systemctl restart web",)  # a string is a list of one command
    assert web2.health == ("curl -fs localhost/health",)
    assert web3.hostname == "2001:db8::1" and web3.port == 22
    assert worker.roles == ("worker",) and worker.restart == ("systemctl restart worker",)
    assert worker.health == ("true",)  # deploy.health where the host sets none
    assert settings.migrate_on == web2


def test_hosts_flag_names_configured_hosts_and_keeps_their_values():
    config = {"deploy": {"hosts": ["a", {"host": "b", "root": "/b"}, "c"], "root": "/srv"}}
    settings = load_settings(config, "c,b")  # the second positional parameter is --hosts
    assert [(t.name, t.root) for t in settings.targets] == [("b", "/b"), ("c", "/srv")]
    assert [t.name for t in settings.fleet] == ["a", "b", "c"]
    # the migration host stays the first configured host, outside the targets
    assert settings.migrate_on.name == "a" and settings.limited
    assert load_settings(config, hosts="a,b,c").limited is False
    with pytest.raises(
        ConfigError, match=r"--hosts: d, e is not a configured host; hosts: a, b, c"
    ):
        load_settings(config, "a,d,e")
    with pytest.raises(ConfigError, match="at least one host"):
        load_settings(config, " , ")


def test_the_migrations_folder_needs_no_hosts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert migrations_folder({}) == tmp_path / "migrations"
    config = {
        "deploy": {"repo": str(tmp_path / "app"), "stages": {"p": {"datamig": {"path": "db/m"}}}},
        "datamig": {"path": "data"},
    }
    assert migrations_folder(config) == tmp_path / "app" / "data"
    assert migrations_folder(config, stage="p") == tmp_path / "app" / "db" / "m"
    with pytest.raises(ConfigError, match=r"did you mean datamig\.path"):
        migrations_folder({"datamig": {"paht": "x"}})


def test_with_targets_moves_the_migration_host_into_the_targets():
    settings = settings_of(**SSH)
    web2 = settings.fleet[1]
    narrowed = with_targets(settings, (web2,))
    assert narrowed.targets == (web2,) and narrowed.migrate_on == web2
    assert with_targets(settings, settings.fleet).migrate_on == settings.fleet[0]


@pytest.mark.parametrize(
    ("deploy", "datamig", "message"),
    [
        ({"hosts": ["web1"]}, {}, "set deploy.root"),
        ({"hosts": ["bad host!"], "root": "/r"}, {}, "not 'user@host"),
        ({"hosts": ["web1:99999"], "root": "/r"}, {}, "not 'user@host"),
        ({"hosts": ["2001:db8::1"], "root": "/r"}, {}, "not 'user@host"),
        ({"hosts": ["a", "a"], "root": "/r"}, {}, "twice"),
        ({"hosts": [{"host": "a", "rooot": "/r"}]}, {}, r"did you mean deploy.hosts\[a\].root"),
        ({"hosts": [{"root": "/r"}]}, {}, "with a 'host' key"),
        ({"hosts": ["a"], "root": "/r", "migrate_on": "b"}, {}, "neither a host nor a role"),
        ({"hosts": [{"host": "a", "roles": [1]}], "root": "/r"}, {}, "list of names"),
        ({**SSH, "keep_releases": 0}, {}, r"keep_releases must be a whole number, at least 1"),
        ({**SSH, "keep_releases": 2.5}, {}, "whole number"),
        ({**SSH, "keep_releases": True}, {}, "keep_releases must be a whole number"),
        ({**SSH, "shared_dirs": ["../etc"]}, {}, "without '..'"),
        ({**SSH, "shared_files": ["/etc/passwd"]}, {}, "relative path"),
        ({**SSH, "shared_files": "log"}, {}, "must be a list"),
        ({"hosts": "web1", "root": "/r"}, {}, "deploy.hosts must be a list"),
        ({**SSH, "accept_new_host_keys": "maybe"}, {}, "true or false"),
        ({**SSH, "accept_new_host_keys": ""}, {}, "true or false"),
        ({**SSH, "connect_timeout": "soon"}, {}, "deploy.connect_timeout must be a number"),
        ({**SSH, "connect_timeout": 0}, {}, "connect_timeout must be .* greater than 0"),
        ({**SSH, "keepalive": -1}, {}, "deploy.keepalive must be .* greater than 0"),
        ({**SSH, "command_timeout": "nan"}, {}, "command_timeout must be a number"),
        ({**SSH, "health_timeout": 0}, {}, "health_timeout must be .* greater than 0"),
        ({**SSH, "restart_batch": 0}, {}, "restart_batch must be a whole number, at least 1"),
        ({**SSH, "restart_batch": "0%"}, {}, "percentage from 1% to 100%"),
        ({**SSH, "restart_batch": "150%"}, {}, "percentage from 1% to 100%"),
        ({**SSH, "restart_batch": "half"}, {}, "restart_batch must be a whole number"),
        ({**SSH, "venv": "sometimes"}, {}, "deploy.venv must be one of auto, off"),
        ({**SSH, "installer": "conda"}, {}, "deploy.installer must be one of auto, uv, pip"),
        ({**SSH, "install_args": "--no-index"}, {}, r"list of arguments \(e.g."),
        ({**SSH, "requirements": "/etc/reqs.txt"}, {}, "inside the release"),
        ({**SSH, "build": [""]}, {}, "deploy.build must be a list of commands"),
        ({**SSH, "before_switch": {"a": 1}}, {}, "before_switch must be a list of commands"),
        ({**SSH, "restart": ["ok", 3]}, {}, "deploy.restart must be a list of commands"),
        ({**SSH, "health": ["a"], "health_cmd": "b"}, {}, "both health and health_cmd"),
        ({**SSH, "python": ""}, {}, "deploy.python must be a non-empty string"),
        ({**SSH, "repo": 5}, {}, "deploy.repo must be a non-empty string"),
        ({**SSH, "stages": ["prod"]}, {}, "deploy.stages must be a mapping"),
        (SSH, {"lock_timeout": -1}, r"datamig.lock_timeout must be a number of seconds, 0 or more"),
        (SSH, {"timeout": 0}, "datamig.timeout must be a number of seconds greater than 0"),
        (SSH, {"statement_timeout": "x"}, "datamig.statement_timeout must be a number"),
        (SSH, {"pg_lock_timeout": -2}, "pg_lock_timeout must be a number of seconds"),
        (SSH, {"revert_on_rollback": "perhaps"}, "datamig.revert_on_rollback must be true or"),
        (SSH, {"path": "../elsewhere"}, "datamig.path"),
        (SSH, {"lock_timeuot": 5}, r"did you mean datamig.lock_timeout\?"),
    ],
)
def test_bad_configuration_names_the_key(deploy, datamig, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({"deploy": deploy, "datamig": datamig})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"deploy": ["hosts", "root"]}, "deploy: must be a mapping of keys"),
        ({"deploy": SSH, "datamig": "migrations"}, "datamig: must be a mapping of keys"),
    ],
)
def test_sections_of_the_wrong_shape_are_exit_2_not_a_traceback(config, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings(config)
    assert raised.value.exit_code == 2


def test_every_number_has_a_range_and_zero_means_zero_where_allowed():
    settings = settings_of(
        **SSH,
        connect_timeout="2.5",  # environment variables are text
        keepalive=1,
        command_timeout=0.5,
        health_timeout="45",
        keep_releases="1",
        datamig={"lock_timeout": 0, "timeout": "120", "statement_timeout": 30},
    )
    assert settings.lock_timeout == 0  # not the default 60
    assert (settings.connect_timeout, settings.keepalive, settings.command_timeout) == (
        2.5,
        1,
        0.5,
    )
    assert (settings.health_timeout, settings.keep_releases) == (45, 1)
    assert (settings.datamig_timeout, settings.statement_timeout) == (120, 30)
    assert settings_of(**SSH, datamig={"timeout": "none"}).datamig_timeout is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[(word, True) for word in ("true", "TRUE", "yes", "On", "1", True, 1)],
        *[(word, False) for word in ("false", "False", "no", "OFF", "0", False, 0)],
    ],
)
def test_booleans_accept_the_usual_words_in_any_case(text, expected):
    settings = settings_of(**SSH, accept_new_host_keys=text, datamig={"revert_on_rollback": text})
    assert settings.accept_new_host_keys is expected and settings.revert_on_rollback is expected


def test_choices_lists_and_yaml_off():
    settings = settings_of(
        **SSH,
        venv=False,  # YAML reads an unquoted `off` as false
        installer="UV",
        install_args=["--find-links", "/srv/wheels", "--retries", 3],
        requirements="requirements/prod.txt",
        venv_python="/usr/bin/python3.12",
        build="make assets",
        before_switch=["./manage.py check", "true"],
    )
    assert (settings.venv, settings.installer) == ("off", "uv")
    assert settings.install_args == ("--find-links", "/srv/wheels", "--retries", "3")
    assert settings.requirements == "requirements/prod.txt"
    assert settings.venv_python == "/usr/bin/python3.12"
    assert settings.build == ("make assets",)
    assert settings.before_switch == ("./manage.py check", "true")
    assert settings_of(**SSH, venv="off").venv == "off"


def test_an_explicit_migrations_path_is_remembered_as_explicit():
    assert settings_of(**SSH).migrations_path_explicit is False
    written = settings_of(**SSH, datamig={"path": "migrations"})
    assert (written.migrations_path, written.migrations_path_explicit) == ("migrations", True)
    other = settings_of(**SSH, datamig={"path": "db/data_migrations/"})
    assert other.migrations_path == "db/data_migrations" and other.migrations_path_explicit


@pytest.mark.parametrize(
    ("value", "sizes"),
    [(None, [5]), ("all", [5]), (2, [2, 2, 1]), ("3", [3, 2]), ("25%", [2, 2, 1]),
     ("100%", [5]), ("1%", [1, 1, 1, 1, 1]), (10, [5])],
)  # fmt: skip
def test_restart_batches(value, sizes):
    hosts = [f"h{n}" for n in range(5)]
    settings = settings_of(hosts=hosts, root="/r", restart_batch=value)
    batches = settings.restart_batches(settings.targets)
    assert [len(batch) for batch in batches] == sizes
    assert [t for batch in batches for t in batch] == list(settings.targets)  # order kept
    assert settings.restart_batches([]) == []


def test_migrate_on_names_a_host_or_a_role():
    hosts = [
        {"host": "db-admin", "roles": ["admin"]},
        {"host": "web1", "roles": ["web"]},
        {"host": "worker1", "roles": ["worker", "jobs"]},
        {"host": "worker2", "roles": ["worker"]},
    ]
    by_role = settings_of(hosts=hosts, root="/r", migrate_on="worker")
    assert by_role.migrate_on.name == "worker1"  # the role's first host
    assert settings_of(hosts=hosts, root="/r", migrate_on="worker2").migrate_on.name == "worker2"
    with pytest.raises(ConfigError) as raised:
        settings_of(hosts=hosts, root="/r", migrate_on="workers")
    message = str(raised.value)
    assert "hosts: db-admin, web1, worker1, worker2" in message
    assert "roles: admin, jobs, web, worker" in message


def test_limit_without_inventory_takes_names_and_roles():
    hosts = [
        {"host": "deploy@web1:2222", "roles": ["web", "eu"]},
        {"host": "web2", "roles": ["web", "us"]},
        {"host": "worker1", "roles": ["worker", "eu"]},
        {"host": "db1", "roles": ["db"]},
    ]
    config = {"deploy": {"hosts": hosts, "root": "/r"}}

    def names(pattern, hosts_flag=None, **extra):
        config["deploy"].update(extra)
        settings = load_settings(config, hosts_flag, limit=pattern)
        return [t.name for t in settings.targets]

    assert names("web") == ["deploy@web1:2222", "web2"]
    assert names("worker1:db1") == ["worker1", "db1"]
    assert names("deploy@web1:2222,db") == ["deploy@web1:2222", "db1"]
    assert names("web:&eu") == ["deploy@web1:2222"]
    assert names("all:!db") == ["deploy@web1:2222", "web2", "worker1"]
    assert names("!web") == ["worker1", "db1"]  # only exclusions start from every host
    assert names("w*:!worker*") == ["deploy@web1:2222", "web2"]  # globs match names and roles
    assert names("eu", hosts_flag="worker1,db1") == ["worker1"]  # --hosts, then --limit
    assert names(None, limit="db") == ["db1"]  # deploy.limit
    assert names("web", limit="db") == ["deploy@web1:2222", "web2"]  # --limit over deploy.limit
    settings = load_settings(config, limit="db")
    assert settings.limited and len(settings.fleet) == 4
    assert settings.migrate_on.name == "deploy@web1:2222"  # still the first configured host
    with pytest.raises(ConfigError, match=r"'dbb' matches no host or role; hosts: .*roles: db"):
        names("all:!dbb")  # a mistyped exclusion must not deploy to db1
    with pytest.raises(ConfigError, match="leaves no host"):
        names("web:&worker")


def test_stages_merge_over_the_top_level():
    config = {
        "deploy": {
            "hosts": ["local"],
            "root": "/tmp/app",
            "keep_releases": 3,
            "restart": ["echo restart"],
            "stages": {
                "staging": {"hosts": ["deploy@staging1"], "root": "/srv/staging"},
                "production": {
                    "hosts": [{"host": "deploy@web1", "roles": ["web"]}, "deploy@web2"],
                    "keep_releases": 10,
                    "health_cmd": "curl -fs localhost",
                    "datamig": {"lock_timeout": 0, "path": "db/migrations"},
                },
            },
        },
        "datamig": {"lock_timeout": 5},
    }
    top = load_settings(config)  # stages defined, none chosen: the top-level keys
    assert [t.name for t in top.targets] == ["local"] and top.stage is None
    assert top.keep_releases == 3 and top.lock_timeout == 5

    production = load_settings(config, stage="production")
    assert production.stage == "production"
    assert [t.name for t in production.targets] == ["deploy@web1", "deploy@web2"]
    assert production.targets[0].root == "/tmp/app"  # not set by the stage: the top level's
    assert production.keep_releases == 10
    assert production.targets[0].restart == ("echo restart",)
    assert production.targets[0].health == ("curl -fs localhost",)
    assert (production.lock_timeout, production.migrations_path) == (0, "db/migrations")
    assert production.migrations_path_explicit

    config["deploy"]["stage"] = "staging"  # INVOKE_DEPLOY_STAGE sets this key
    staging = load_settings(config)
    assert staging.stage == "staging" and staging.targets[0].root == "/srv/staging"
    assert load_settings(config, stage="production").stage == "production"  # --stage wins

    with pytest.raises(ConfigError, match="unknown stage 'prod'; stages: staging, production"):
        load_settings(config, stage="prod")


def test_stage_mistakes_are_exit_2_naming_the_key():
    def load(stages, stage=None, **deploy):
        return load_settings({"deploy": {**SSH, **deploy, "stages": stages}}, stage=stage)

    with pytest.raises(
        ConfigError, match=r"deploy.stages.prod.keep_relases .* deploy.stages.prod.keep_releases"
    ):
        load({"prod": {"keep_relases": 3}})  # checked even when another stage is chosen
    with pytest.raises(ConfigError, match=r"deploy.stages.prod.datamig.lock_timeout"):
        load({"prod": {"datamig": {"lock_timout": 3}}})
    with pytest.raises(ConfigError, match=r"deploy\.stages\.prod\.stages is not a known key"):
        load({"prod": {"stages": {}}})
    with pytest.raises(ConfigError, match="must be a mapping of deploy keys"):
        load({"prod": ["hosts"]})
    with pytest.raises(ConfigError, match="unknown stage 'prod'; stages: none are defined"):
        load_settings({"deploy": SSH}, stage="prod")
    with pytest.raises(ConfigError, match=r"or choose a stage with --stage \(staging, prod\)"):
        load_settings({"deploy": {"stages": {"staging": {}, "prod": {}}}})
    with pytest.raises(ConfigError, match="both health and health_cmd"):
        load({"prod": {"health": ["a"], "health_cmd": "b"}}, stage="prod")
    # a stage's health_cmd replaces the top level's health
    assert load({"p": {"health_cmd": "b"}}, "p", health=["a"]).targets[0].health == ("b",)


def test_readme_configuration_reference_lists_every_key_with_its_default():
    text = README.read_text()
    assert "## Configuration reference" in text
    reference = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows = {
        match[1]: match[2]
        for match in re.finditer(r"^\| `([a-z_.]+)`[^|]*\|[^|]*\| ([^|]+) \|$", reference, re.M)
    }
    for section, keys in DEFAULTS.items():
        for key, default in keys.items():
            name = f"{section}.{key}"
            assert name in rows, f"{name} is missing from the README's Configuration reference"
            if isinstance(default, bool | int | str) and default not in ("",):
                shown = str(default).lower() if isinstance(default, bool) else str(default)
                assert shown in rows[name], f"{name}: README default {rows[name]!r} != {default!r}"
    assert text.index("## Configuration reference") < text.index("## Architecture")
    assert "## Stages and roles (for Capistrano users)" in text


def test_target_is_hashable_and_compares_by_value():
    a = Target(name="a", root="/r", python=None, roles=("web",), restart=("x",))
    assert a == Target(name="a", root="/r", python=None, roles=("web",), restart=("x",))
    assert len({a, a}) == 1


# -- invoke's layering ----------------------------------------------------------------------------


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
    assert project.lock_timeout == 60  # the documented default where nothing sets the key

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


def test_a_boolean_a_file_sets_is_still_read_from_the_variables_text(tmp_path, monkeypatch):
    """invoke casts INVOKE_* by the type of the value a file wrote: "false" over a file's
    `false` would be true; the settings take the variable's own text instead."""
    (tmp_path / "invoke.yaml").write_text(
        json.dumps({"deploy": {**SSH, "accept_new_host_keys": False}})
    )
    monkeypatch.setenv("INVOKE_DEPLOY_ACCEPT_NEW_HOST_KEYS", "false")
    monkeypatch.setenv("INVOKE_DATAMIG_REVERT_ON_ROLLBACK", "no")
    config = Config(project_location=str(tmp_path))
    config.load_collection(ns.configuration())
    config.load_project()
    config.load_shell_env()
    assert config.deploy.accept_new_host_keys is True  # what invoke made of it
    settings = load_settings(config)
    assert settings.accept_new_host_keys is False and settings.revert_on_rollback is False

    runtime = tmp_path / "runtime.yaml"  # a later layer (-f FILE) still wins over the variable
    runtime.write_text(json.dumps({"deploy": {"accept_new_host_keys": True}}))
    config = Config(project_location=str(tmp_path), runtime_path=str(runtime))
    config.load_collection(ns.configuration())
    config.load_project()
    config.load_runtime()
    config.load_shell_env()
    assert load_settings(config).accept_new_host_keys is True
