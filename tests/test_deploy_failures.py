"""Deploys that must fail cleanly: held locks, host keys, unwritable hosts, hostile paths and
archives, Ctrl-C. Each test checks the message AND that no host was left half-changed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from servers import free_port

from deploytools.admin import setup
from deploytools.config import load_settings
from deploytools.deploy import deploy
from deploytools.deploy.build import check_archive
from deploytools.exceptions import HostError, LockHeld, NeedsPerson, TransportError, UsageError
from deploytools.lock import LockOwner
from deploytools.rollback import rollback

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


@contextlib.contextmanager
def read_only(path: Path, host=None):
    """A read-only bind mount of ``path`` over itself (root ignores permission bits), made
    inside ``host``'s own mount namespace when given, so only that host sees it."""
    wrap = host.in_namespace if host is not None else (lambda argv: argv)
    subprocess.run(wrap(["mount", "--bind", str(path), str(path)]), check=True)
    try:
        subprocess.run(wrap(["mount", "-o", "remount,bind,ro", str(path)]), check=True)
        yield
    finally:
        subprocess.run(wrap(["umount", str(path)]), check=True)


def sshd_host(cluster, name: str):
    return next(host for host in cluster.hosts if host.spec == name)


def assert_untouched(fleet, before):
    """No host changed: same current, files, log and no lock anywhere."""
    after = fleet.snapshot()
    assert after == before
    for host in fleet.names:
        assert not fleet.locked(host)


# -- the deploy lock ------------------------------------------------------------------------------


def hold_lock(fleet, host: str, **fields) -> LockOwner:
    owner = LockOwner(
        user=fields.get("user", "alice"),
        host=fields.get("host", "alices-laptop"),
        pid=fields.get("pid", 4242),
        release="20260101000000-1234567",
        started_at=fields.get("started_at", "2026-01-01T00:00:00Z"),
    )
    lock = fleet.root(host) / "deploy.lock"
    lock.mkdir()
    (lock / "owner.json").write_text(owner.to_json() + "\n")
    return owner


def test_held_lock_exits_3_names_the_owner_and_stays(fleet):
    deploy(fleet.settings())
    fleet.repo.bump()
    held = fleet.names[-1]
    hold_lock(fleet, held)
    owner_file = (fleet.root(held) / "deploy.lock" / "owner.json").read_text()
    before = fleet.snapshot()

    completed = fleet.invoke("deploy")
    assert completed.returncode == 3, completed.stderr
    message = completed.stderr
    for fact in ("alice", "alices-laptop", "4242", "ago", "lock.release", held):
        assert fact in message
    assert fleet.snapshot() == before  # our own locks on the other hosts were released
    assert (fleet.root(held) / "deploy.lock" / "owner.json").read_text() == owner_file

    status = fleet.invoke("lock.status", "--json")
    assert status.returncode == 0, status.stderr
    locks = {h["host"]: h["lock"] for h in json.loads(status.stdout)["hosts"]}
    assert locks[held]["user"] == "alice" and locks[held]["pid"] == 4242
    assert all(locks[h] is None for h in fleet.names if h != held)
    assert locks[held]["alive"] == "unknown"  # recorded without this machine's id
    table = fleet.invoke("lock.status")
    assert "alice@alices-laptop (pid 4242, on another machine" in table.stdout

    released = fleet.invoke("lock.release")  # no prompt: stdin is not even a terminal
    assert released.returncode == 0, released.stderr
    assert not any(fleet.locked(h) for h in fleet.names)
    assert fleet.invoke("deploy").returncode == 0


def test_lock_held_in_library_is_lock_held_error(fleet):
    hold_lock(fleet, fleet.names[0], user="bob")
    with pytest.raises(LockHeld, match="bob@"):
        deploy(fleet.settings())
    assert fleet.locked(fleet.names[0])


# -- host keys ------------------------------------------------------------------------------------


def test_unknown_host_key_fails_before_anything_changes(ssh_fleet, ssh_cluster, tmp_path):
    deploy(ssh_fleet.settings())
    ssh_fleet.repo.bump()
    before = ssh_fleet.snapshot()
    unknown = ssh_cluster.hosts[1]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        "".join(h.known_hosts_line + "\n" for h in ssh_cluster.hosts if h is not unknown)
    )
    with pytest.raises(TransportError) as raised:
        deploy(ssh_fleet.settings(known_hosts=str(known_hosts)))
    message = str(raised.value)
    assert unknown.spec in message and "preflight" in message
    assert "not in" in message and "accept_new_host_keys" in message
    assert_untouched(ssh_fleet, before)


def test_changed_host_key_is_refused_even_when_accepting_new_keys(ssh_fleet, ssh_cluster, tmp_path):
    before = ssh_fleet.snapshot()
    impostor = ssh_cluster.hosts[2]
    other_key = tmp_path / "other_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True
    )
    key_type, key_data = other_key.with_suffix(".pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    lines = [
        h.known_hosts_line if h is not impostor else f"{h.known_hosts_name} {key_type} {key_data}"
        for h in ssh_cluster.hosts
    ]
    known_hosts.write_text("\n".join(lines) + "\n")
    with pytest.raises(TransportError, match="CHANGED") as raised:
        deploy(ssh_fleet.settings(known_hosts=str(known_hosts), accept_new_host_keys=True))
    assert impostor.spec in str(raised.value)
    assert_untouched(ssh_fleet, before)
    assert known_hosts.read_text() == "\n".join(lines) + "\n"  # nothing recorded


def test_accept_new_host_keys_records_unknown_keys(ssh_fleet, ssh_cluster, tmp_path):
    known_hosts = tmp_path / "ssh" / "known_hosts"  # does not exist yet
    result = deploy(ssh_fleet.settings(known_hosts=str(known_hosts), accept_new_host_keys=True))
    assert result.status == "succeeded"
    recorded = {line.split()[0]: line.split()[2] for line in known_hosts.read_text().splitlines()}
    assert recorded == {
        h.known_hosts_name: h.known_hosts_line.split()[2] for h in ssh_cluster.hosts
    }
    # and the recorded keys are now checked strictly
    ssh_fleet.repo.bump()
    assert deploy(ssh_fleet.settings(known_hosts=str(known_hosts))).status == "succeeded"


# -- hosts that cannot take the release -----------------------------------------------------------


@needs_root
def test_read_only_root_on_one_host_changes_no_host(ssh_fleet, ssh_cluster):
    first = deploy(ssh_fleet.settings()).release
    ssh_fleet.repo.bump()
    before = ssh_fleet.snapshot()
    broken = ssh_fleet.names[1]
    with (
        read_only(ssh_fleet.root(broken), sshd_host(ssh_cluster, broken)),
        pytest.raises(HostError) as raised,
    ):
        deploy(ssh_fleet.settings())
    message = str(raised.value)
    assert broken in message and "preflight" in message and "Read-only" in message
    assert_untouched(ssh_fleet, before)
    assert set(ssh_fleet.currents().values()) == {first}


@needs_root
def test_upload_failure_on_one_host_removes_the_release_everywhere(ssh_fleet, ssh_cluster):
    first = deploy(ssh_fleet.settings()).release
    ssh_fleet.repo.bump()
    before = ssh_fleet.snapshot()
    broken = ssh_fleet.names[2]
    with (
        read_only(ssh_fleet.root(broken) / "releases", sshd_host(ssh_cluster, broken)),
        pytest.raises(HostError) as raised,
    ):
        deploy(ssh_fleet.settings())
    message = str(raised.value)
    assert broken in message and "upload" in message
    assert_untouched(ssh_fleet, before)
    for host in ssh_fleet.names:
        assert ssh_fleet.releases(host) == [first]


def test_unreachable_host_fails_cleanly(ssh_fleet):
    before = ssh_fleet.snapshot()
    dead = f"root@127.0.0.4:{free_port('127.0.0.4')}"  # nothing listens there
    config = ssh_fleet.config()
    config["deploy"]["hosts"] = [*ssh_fleet.entries, {"host": dead, "root": "/srv/app"}]
    with pytest.raises(TransportError) as raised:
        deploy(load_settings(config))
    assert dead in str(raised.value) and "cannot reach" in str(raised.value)
    assert_untouched(ssh_fleet, before)


# -- hostile input --------------------------------------------------------------------------------


HOSTILE = "we ird 'single' \"double\" $(touch PWNED) `touch PWNED2` ;touch PWNED3"


def test_hostile_root_deploys_and_runs_nothing_injected(fleet, deploy_dir, monkeypatch):
    monkeypatch.chdir(deploy_dir)
    roots = {name: root.parent / HOSTILE / "deep" / "app" for name, root in fleet.roots.items()}
    fleet.roots = roots
    if fleet.kind == "ssh":
        for entry in fleet.entries:
            entry["root"] = str(roots[entry["host"]])
    else:
        fleet.extra["root"] = str(roots["local"])
    setup(fleet.settings())  # creates the parents
    first = deploy(fleet.settings(shared_dirs=["log"], shared_files=[])).release
    fleet.repo.bump()
    second = deploy(fleet.settings(shared_dirs=["log"])).release
    assert rollback(fleet.settings()).release == first
    for host, root in roots.items():
        assert root.is_dir()
        assert fleet.current(host) == first
        assert (root / "releases" / second / "log").is_symlink()
        assert (root / "releases" / second / "log").resolve() == (root / "shared" / "log").resolve()
    pwned = [
        p
        for base in (deploy_dir, Path.home(), Path("/root"), Path("/"), Path("/tmp"))
        for p in base.glob("PWNED*")
    ]
    assert pwned == []


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    import io

    with tarfile.open(path, "w:gz") as archive:
        ok = tarfile.TarInfo("app.py")
        ok.size = 1
        archive.addfile(ok, io.BytesIO(b"x"))
        member.size = len(data) if member.isfile() else 0
        archive.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "link", "problem"),
    [
        ("../escape.py", tarfile.REGTYPE, "", "'..'"),
        ("/etc/evil.py", tarfile.REGTYPE, "", "absolute"),
        ("lib/../../escape.py", tarfile.REGTYPE, "", "'..'"),
        ("passwd", tarfile.SYMTYPE, "/etc/passwd", "leaving"),
        ("lib/up", tarfile.SYMTYPE, "../../outside", "leaving"),
        ("hard", tarfile.LNKTYPE, "../outside", "leaving"),
        ("dev", tarfile.CHRTYPE, "", "device"),
    ],
)
def test_unsafe_archive_members_are_refused(tmp_path, name, kind, link, problem):
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = link
    archive = _tar_with(tmp_path / "r.tar.gz", member, b"boom" if kind == tarfile.REGTYPE else b"")
    with pytest.raises(UsageError, match=problem):
        check_archive(archive)


def test_safe_links_inside_the_release_are_accepted(tmp_path):
    member = tarfile.TarInfo("lib/current_app")
    member.type = tarfile.SYMTYPE
    member.linkname = "../app.py"
    size, names = check_archive(_tar_with(tmp_path / "r.tar.gz", member))
    assert names == ["app.py", "lib/current_app"] and size == 1


def test_build_commands_run_on_a_python_without_extraction_filters(fleet, monkeypatch):
    """Python before 3.11.4 (Debian 12 ships 3.11.2) has no tarfile extraction filters: the
    export for ``deploy.build`` still works (its members were checked before unpacking)."""
    extract = tarfile.TarFile.extractall

    def extractall_of_python_3_11_2(self, path=".", members=None, *, numeric_owner=False):
        return extract(self, path, members, numeric_owner=numeric_owner)

    monkeypatch.delattr(tarfile, "tar_filter", raising=False)
    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall_of_python_3_11_2)
    result = deploy(fleet.settings(build=["echo built > built.txt"]))
    for host in fleet.names:
        release = fleet.root(host) / "releases" / result.release
        assert (release / "built.txt").read_text() == "built\n"
    assert not (fleet.repo.path / "built.txt").exists()  # never in the work tree


def test_repo_with_a_link_leaving_the_release_is_refused_before_any_host(fleet):
    before = fleet.snapshot()
    os.symlink("/etc/passwd", fleet.repo.path / "passwd")
    fleet.repo.commit({}, "add a link out of the tree")
    completed = fleet.invoke("deploy")
    assert completed.returncode == 2, completed.stderr
    assert "passwd" in completed.stderr and "leaving the release" in completed.stderr
    assert fleet.snapshot() == before


# -- Ctrl-C ---------------------------------------------------------------------------------------


def test_interrupted_deploy_leaves_no_lock_and_no_release(fleet, tmp_path):
    first = deploy(fleet.settings()).release
    # a release with a migration, so preflight runs deploy.python on the migration host:
    # a slow one lets the test press Ctrl-C while the deploy is in flight
    fleet.repo.commit({"migrations/202601010000_noop.py": "def run(ctx):\n    pass\n"})
    marker = tmp_path / "in-preflight"
    slow_python = tmp_path / "slow-python"
    slow_python.write_text(
        f"#!/bin/sh\ntouch '{marker}'\nsleep 2\nexec '{sys.executable}' \"$@\"\n"
    )
    slow_python.chmod(0o755)
    entries = fleet.entries
    if fleet.kind == "ssh":
        for entry in entries:
            entry["python"] = str(slow_python)
        config = {}
    else:
        config = {"python": str(slow_python)}
    before = fleet.snapshot()
    process = fleet.start_deploy_until(marker, **config)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert "interrupted" in stderr
    assert fleet.snapshot() == before
    assert set(fleet.currents().values()) == {first}


@needs_root
def test_finish_failing_after_the_switch_needs_a_person(ssh_fleet, ssh_cluster):
    deploy(ssh_fleet.settings())
    ssh_fleet.repo.bump()
    broken = ssh_fleet.names[0]
    log = ssh_fleet.root(broken) / "revisions.jsonl"
    with (
        read_only(log, sshd_host(ssh_cluster, broken)),
        pytest.raises(NeedsPerson) as raised,
    ):
        deploy(ssh_fleet.settings())
    error = raised.value
    assert error.exit_code == 4
    message = str(error)
    assert broken in message and "finish" in message and "lock.release" in message
    release = error.result.release
    assert set(ssh_fleet.currents().values()) == {release}  # live everywhere
    assert ssh_fleet.locked(broken)
    assert not any(ssh_fleet.locked(host) for host in ssh_fleet.names if host != broken)


def test_a_host_that_is_not_set_up_is_exit_2_and_says_run_setup(ssh_fleet):
    missing = ssh_fleet.names[2]
    root = ssh_fleet.root(missing)
    import shutil

    shutil.rmtree(root)
    before = ssh_fleet.snapshot()
    completed = ssh_fleet.invoke("deploy")
    assert completed.returncode == 2, completed.stderr
    assert missing in completed.stderr and "invoke setup" in completed.stderr
    assert ssh_fleet.snapshot() == before and not root.exists()
