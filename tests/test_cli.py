"""The command line as a newcomer meets it: help, flags, and wording of the human output."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def local(deploy_dir, app_repo):
    from conftest import make_local_fleet

    from deploytools.admin import setup

    fleet = make_local_fleet(deploy_dir, app_repo)
    setup(fleet.settings())
    return fleet


def test_task_help_is_help_and_names_every_flag(local):
    completed = local.invoke("deploy", "-h")
    assert completed.returncode == 0, completed.stderr
    for flag in ("--ref", "--dry-run", "--json", "--hosts", "--limit", "--stage", "--new-ledger"):
        assert flag in completed.stdout
    listing = local.invoke("--list")
    for name in (
        "setup",
        "deploy",
        "rollback",
        "restart",
        "releases",
        "lock.status",
        "lock.release",
        "datamig.status",
        "datamig.apply",
        "datamig.new",
    ):
        assert name in listing.stdout


def test_human_output_speaks_plainly(local):
    first = local.invoke("deploy")
    assert first.returncode == 0, first.stderr
    assert "to 1 host\n" in first.stdout or "to 1 host " in first.stdout
    assert "1 hosts" not in first.stdout
    local.repo.bump()
    assert local.invoke("deploy").returncode == 0
    rolled = local.invoke("rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back from" in rolled.stdout and "on 1 host" in rolled.stdout
    listing = local.invoke("releases")
    assert "marks" in listing.stdout and "rollback target:" in listing.stdout
    for line in (first.stdout + listing.stdout).splitlines():
        assert line == line.rstrip(), repr(line)  # no trailing spaces in titles or rows


def test_a_failed_deploy_says_rolled_back_in_words(local):
    health = {"health": ["test ! -f sick"], "health_timeout": 1}
    assert local.invoke("deploy", **health).returncode == 0
    local.repo.commit({"sick": "yes\n"})
    completed = local.invoke("deploy", **health)
    assert completed.returncode == 1, completed.stderr
    assert "rolled back" in completed.stdout + completed.stderr
    assert "rolled_back" not in completed.stdout + completed.stderr
    local.repo.bump()
    report = json.loads(local.invoke("deploy", "--json", **health).stdout)
    assert report["status"] == "rolled_back"  # the JSON keeps its stable value


def test_a_dirty_work_tree_is_warned_about(local):
    (local.repo.path / "app.py").write_text("VERSION = 'not committed'\n")
    dry = local.invoke("deploy", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "uncommitted changes are NOT in the release: app.py" in dry.stderr
    completed = local.invoke("deploy")
    assert completed.returncode == 0, completed.stderr
    assert "uncommitted changes are NOT in the release: app.py" in completed.stderr


def test_setup_says_once_why_it_cannot_create_the_root(local, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    completed = local.invoke("setup", root=str(blocker / "app"))
    assert completed.returncode == 1
    assert completed.stderr.count("Not a directory") == 1, completed.stderr
    assert "cannot create the layout under" in completed.stderr


def test_deploying_part_of_the_fleet_warns_that_it_stays_split(ssh_fleet):
    first, *others = ssh_fleet.names
    dry = ssh_fleet.invoke("deploy", "--dry-run", "--hosts", first)
    assert dry.returncode == 0, dry.stderr
    assert f"only {first} would switch" in dry.stderr
    assert all(name in dry.stderr for name in others)
    completed = ssh_fleet.invoke("deploy", "--hosts", first)
    assert completed.returncode == 0, completed.stderr
    assert f"only {first} will switch; {', '.join(others)} keep their release" in completed.stderr
    currents = ssh_fleet.currents()
    assert currents[first] is not None and all(currents[name] is None for name in others)
