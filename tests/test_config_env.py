"""INVOKE_* environment variables, read by a real ``invoke`` process: booleans, numbers, lists,
stages and patterns arrive as text and are converted by deploytools, never cast by invoke."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

TASKS = textwrap.dedent(
    """
    import json

    from invoke import Collection, Exit, task

    from deploytools.config import invoke_defaults, load_settings
    from deploytools.exceptions import DeployToolsError


    @task
    def show(c, hosts=None, limit=None, stage=None):
        try:
            s = load_settings(c.config, hosts, limit=limit, stage=stage)
        except DeployToolsError as error:
            raise Exit(str(error), code=error.exit_code) from None
        print(json.dumps({
            "targets": [t.name for t in s.targets],
            "stage": s.stage,
            "accept_new_host_keys": s.accept_new_host_keys,
            "revert_on_rollback": s.revert_on_rollback,
            "connect_timeout": s.connect_timeout,
            "keep_releases": s.keep_releases,
            "lock_timeout": s.lock_timeout,
            "restart_batch_percent": s.restart_batch_percent,
            "restart": list(s.targets[0].restart),
            "root": s.targets[0].root,
        }))


    ns = Collection(show)
    ns.configure(invoke_defaults())
    """
)
PROJECT = {
    "deploy": {
        "hosts": [{"host": "deploy@web1", "roles": ["web"]}, "deploy@db1"],
        "root": "/srv/app",
        "stages": {"prod": {"root": "/srv/prod"}},
    }
}


@pytest.fixture
def project(tmp_path):
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "invoke.yaml").write_text(json.dumps(PROJECT))
    return tmp_path


def show(project, env, *flags):
    """``invoke show`` in the project with only these INVOKE_* variables set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    completed = subprocess.run(
        [sys.executable, "-m", "invoke", "show", *flags],
        cwd=project,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    answer = json.loads(completed.stdout) if completed.returncode == 0 else None
    return completed.returncode, answer, completed.stderr


@pytest.mark.parametrize(
    ("text", "expected"), [("false", False), ("no", False), ("OFF", False), ("0", False),
                           ("true", True), ("Yes", True), ("on", True), ("1", True)]
)  # fmt: skip
def test_boolean_variables_mean_what_they_say(project, text, expected):
    code, answer, stderr = show(
        project,
        {
            "INVOKE_DEPLOY_ACCEPT_NEW_HOST_KEYS": text,
            "INVOKE_DATAMIG_REVERT_ON_ROLLBACK": text,
        },
    )
    assert code == 0, stderr
    assert answer["accept_new_host_keys"] is expected
    assert answer["revert_on_rollback"] is expected


def test_a_false_variable_over_a_file_that_writes_the_boolean(project):
    (project / "invoke.yaml").write_text(
        json.dumps({"deploy": {**PROJECT["deploy"], "accept_new_host_keys": True}})
    )
    code, answer, stderr = show(project, {"INVOKE_DEPLOY_ACCEPT_NEW_HOST_KEYS": "false"})
    assert code == 0, stderr
    assert answer["accept_new_host_keys"] is False


def test_numbers_stages_patterns_and_commands_from_variables(project):
    code, answer, stderr = show(
        project,
        {
            "INVOKE_DEPLOY_CONNECT_TIMEOUT": "2.5",
            "INVOKE_DEPLOY_KEEP_RELEASES": "3",
            "INVOKE_DATAMIG_LOCK_TIMEOUT": "0",
            "INVOKE_DEPLOY_RESTART_BATCH": "25%",
            "INVOKE_DEPLOY_RESTART": "systemctl restart app",
            "INVOKE_DEPLOY_STAGE": "prod",
            "INVOKE_DEPLOY_LIMIT": "web",
        },
    )
    assert code == 0, stderr
    assert (answer["connect_timeout"], answer["keep_releases"]) == (2.5, 3)
    assert answer["lock_timeout"] == 0  # 0 means 0, not the default 60
    assert answer["restart_batch_percent"] == 25
    assert answer["restart"] == ["systemctl restart app"]
    assert (answer["stage"], answer["root"]) == ("prod", "/srv/prod")
    assert answer["targets"] == ["deploy@web1"]

    # task flags over the variables
    code, answer, stderr = show(
        project,
        {"INVOKE_DEPLOY_STAGE": "nope", "INVOKE_DEPLOY_LIMIT": "web"},
        "--stage",
        "prod",
        "--limit",
        "deploy@db1",
    )
    assert code == 0, stderr
    assert (answer["stage"], answer["targets"]) == ("prod", ["deploy@db1"])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"INVOKE_DEPLOY_CONNECT_TIMEOUT": "soon"}, "deploy.connect_timeout must be a number"),
        ({"INVOKE_DEPLOY_KEEP_RELEASES": "0"}, "deploy.keep_releases must be a whole number"),
        ({"INVOKE_DATAMIG_LOCK_TIMEOUT": "-1"}, "datamig.lock_timeout must be a number of sec"),
        ({"INVOKE_DEPLOY_ACCEPT_NEW_HOST_KEYS": "maybe"}, "must be true or false"),
        ({"INVOKE_DEPLOY_SHARED_DIRS": "log,tmp"}, "deploy.shared_dirs must be a list"),
        ({"INVOKE_DEPLOY_STAGE": "production"}, "unknown stage 'production'; stages: prod"),
        ({"INVOKE_DEPLOY_LIMIT": "!dbb"}, "'dbb' matches no host or role"),
    ],
)
def test_bad_variables_are_exit_2_naming_the_key(project, env, message):
    code, _answer, stderr = show(project, env)
    assert code == 2, stderr
    assert message in stderr and "Traceback" not in stderr


def test_hosts_from_a_variable_is_exit_2_saying_lists_need_a_file(tmp_path):
    (tmp_path / "tasks.py").write_text(TASKS)  # no invoke.yaml: the variable alone
    code, _answer, stderr = show(tmp_path, {"INVOKE_DEPLOY_HOSTS": "deploy@web1,deploy@web2"})
    assert code == 2, stderr
    assert (
        "deploy.hosts must be a list" in stderr and "INVOKE_* variable cannot set a list" in stderr
    )
    assert "Traceback" not in stderr
