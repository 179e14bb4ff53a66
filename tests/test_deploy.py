"""Deploys and rollbacks end to end: on three real sshd hosts, and on a local directory target."""

from __future__ import annotations

import json
import os
import threading

import pytest

from deploytools.deploy import deploy
from deploytools.exceptions import ReleaseNotFound
from deploytools.rollback import rollback


def test_two_deploys_give_every_host_the_same_releases_and_a_log(fleet):
    first = deploy(fleet.settings())
    fleet.repo.bump()
    second = deploy(fleet.settings())
    sha = fleet.repo.git("rev-parse", "HEAD")

    assert first.release != second.release
    assert second.release.endswith("-" + sha[:7])
    for host in fleet.names:
        root = fleet.root(host)
        assert fleet.releases(host) == sorted([first.release, second.release])
        assert os.readlink(root / "current") == f"releases/{second.release}"  # relative
        manifest = json.loads((root / "releases" / second.release / ".release.json").read_text())
        assert manifest["id"] == second.release and manifest["sha"] == sha
        assert (root / "current" / "app.py").read_text() == "VERSION = 1\n"
        log = fleet.revisions(host)
        assert [line["release"] for line in log] == [first.release, second.release]
        assert [line["status"] for line in log] == ["succeeded", "succeeded"]
        assert log[1]["previous"] == first.release and log[1]["sha"] == sha
        assert log[1]["user"] and log[1]["at"].endswith("Z")
        assert not fleet.locked(host)
        # nothing half-done is left lying around
        assert not [p for p in (root / "releases").iterdir() if p.name.startswith(".")]
    assert second.status == "succeeded"
    assert {h["current"] for h in second.hosts} == {second.release}


def test_current_never_missing_or_partial_during_twenty_switches(fleet):
    first = deploy(fleet.settings()).release
    fleet.repo.bump()
    second = deploy(fleet.settings()).release
    root = fleet.root()
    stop = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                target = os.path.realpath(root / "current")
                if not os.path.exists(os.path.join(target, ".release.json")):
                    problems.append(f"current -> {target} is not a complete release")
            except OSError as error:
                problems.append(f"current unreadable: {error}")
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for number in range(20):
            rollback(fleet.settings(), to=first if number % 2 == 0 else second)
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert reads > 100
    assert fleet.current(fleet.names[0]) == second


def test_keep_releases_keeps_current_and_its_rollback_target(fleet):
    ids = []
    for _ in range(4):
        ids.append(deploy(fleet.settings(keep_releases=2)).release)
        fleet.repo.bump()
    for host in fleet.names:
        assert fleet.releases(host) == sorted(ids[2:])
        assert fleet.current(host) == ids[3]


def test_rollback_goes_back_one_release_at_a_time(fleet):
    ids = []
    for _ in range(3):
        ids.append(deploy(fleet.settings()).release)
        fleet.repo.bump()

    result = rollback(fleet.settings())
    assert result.release == ids[1] and result.previous == ids[2]
    assert set(fleet.currents().values()) == {ids[1]}
    rollback(fleet.settings())
    assert set(fleet.currents().values()) == {ids[0]}
    for host in fleet.names:
        log = fleet.revisions(host)
        assert [(line["action"], line["release"]) for line in log[-2:]] == [
            ("rollback", ids[1]),
            ("rollback", ids[0]),
        ]
        assert log[-1]["previous"] == ids[1]
        assert not fleet.locked(host)


def test_rollback_to_an_unknown_release_changes_nothing(fleet):
    deploy(fleet.settings())
    fleet.repo.bump()
    deploy(fleet.settings())
    before = fleet.snapshot()

    with pytest.raises(ReleaseNotFound, match="20990101000000-abcdef0"):
        rollback(fleet.settings(), to="20990101000000-abcdef0")
    assert fleet.snapshot() == before

    completed = fleet.invoke("rollback", "--to", "20990101000000-abcdef0")
    assert completed.returncode == 2, completed.stderr
    assert "20990101000000-abcdef0" in completed.stderr
    assert fleet.snapshot() == before


def test_rollback_target_is_never_a_failed_release_nor_chosen_by_mtime(fleet):
    ids = [deploy(fleet.settings()).release]
    fleet.repo.bump()
    ids.append(deploy(fleet.settings()).release)
    # make the oldest release look newest on disk: the log decides, not directory times
    for host in fleet.names:
        os.utime(fleet.root(host) / "releases" / ids[0], (4_000_000_000, 4_000_000_000))
    fleet.repo.bump()
    ids.append(deploy(fleet.settings()).release)
    assert rollback(fleet.settings()).release == ids[1]


def test_deploy_json_reports_one_connection_and_four_commands_per_host(fleet):
    completed = fleet.invoke("deploy", "--json")
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)  # stdout holds only the JSON object
    assert report["status"] == "succeeded" and report["error"] is None
    assert report["migrations"] is None
    assert [h["host"] for h in report["hosts"]] == fleet.names
    for host in report["hosts"]:
        assert host["current"] == report["release"]
        assert host["commands"] <= 4
        assert host["connections"] == (1 if fleet.kind == "ssh" else 0)


def test_cli_deploy_and_releases_listing(fleet):
    assert fleet.invoke("deploy").returncode == 0
    fleet.repo.bump()
    completed = fleet.invoke("deploy")
    assert completed.returncode == 0, completed.stderr
    assert "finish" in completed.stdout

    listing = fleet.invoke("releases", "--json")
    assert listing.returncode == 0, listing.stderr
    hosts = json.loads(listing.stdout)["hosts"]
    assert len(hosts) == len(fleet.names)
    for entry in hosts:
        marks = {
            r["id"]: (r["current"], r["rollback_target"], r["failed"]) for r in entry["releases"]
        }
        assert marks[entry["current"]] == (True, False, False)
        assert sorted(marks.values()) == [(False, True, False), (True, False, False)]
    table = fleet.invoke("releases")
    assert "rollback target" in table.stdout and "current" in table.stdout


def _tree(root, release):
    """{path: (sha256, executable)} of a release as the host holds it, links as ('->', target)."""
    import hashlib

    base = root / "releases" / release
    tree = {}
    for path in sorted(base.rglob("*")):
        relative = path.relative_to(base).as_posix()
        if relative in (".release.json", "REVISION"):
            continue
        if path.is_symlink():
            tree[relative] = ("->", os.readlink(path))
        elif path.is_file():
            tree[relative] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                os.access(path, os.X_OK),
            )
    return tree


def test_a_redeploy_sends_only_what_changed_and_the_host_has_exactly_the_release(fleet):
    fleet.repo.commit(
        {
            "keep.txt": "unchanged\n" * 1000,
            "gone.txt": "to be deleted\n",
            "tool.sh": "echo hi\n",
            "docs/a.md": "a\n",
        }
    )
    (fleet.repo.path / "link").symlink_to("keep.txt")
    fleet.repo.commit({}, "a link")
    first = deploy(fleet.settings())
    # the app writes into its release at run time (bytecode caches): never carried over
    for root in fleet.roots.values():
        cache = root / "releases" / first.release / "__pycache__"
        cache.mkdir()
        (cache / "app.cpython-311.pyc").write_bytes(b"stale")
    fleet.repo.commit({"app.py": "VERSION = 'two'\n", "gone.txt": None})
    (fleet.repo.path / "tool.sh").chmod(0o755)
    (fleet.repo.path / "link").unlink()
    (fleet.repo.path / "link").symlink_to("docs/a.md")
    fleet.repo.commit({}, "mode and link")
    second = deploy(fleet.settings())
    expected = {
        path: value for path, value in _tree(fleet.root(fleet.names[0]), second.release).items()
    }
    assert "gone.txt" not in expected and "__pycache__/app.cpython-311.pyc" not in expected
    assert expected["tool.sh"][1] is True and expected["link"] == ("->", "docs/a.md")
    for host in second.hosts:
        # app.py, tool.sh (mode) and the link changed; keep.txt, docs/ and tasks.py are reused
        assert host["files_sent"] == 3, host
        assert _tree(fleet.roots[host["host"]], second.release) == expected
    root = fleet.root(fleet.names[0])
    kept = root / "releases" / second.release / "keep.txt"
    assert kept.stat().st_ino == (root / "releases" / first.release / "keep.txt").stat().st_ino


def test_archives_are_compressed_only_when_it_pays(fleet, tmp_path):
    """Code is gzipped; files that do not shrink (images, wheels) are sent as they are, and
    every host still has them byte for byte."""
    from deploytools.deploy.build import GZIP, NONE, build_release

    blob = os.urandom(600_000)
    (fleet.repo.path / "assets").mkdir()
    (fleet.repo.path / "assets" / "photo.jpg").write_bytes(blob)
    fleet.repo.commit({}, "an incompressible asset")
    (tmp_path / "full").mkdir()
    release = build_release(fleet.repo.path, "HEAD", "migrations", tmp_path / "full")
    assert release.payload(None).compression == NONE
    result = deploy(fleet.settings())
    for name in fleet.names:
        assert (fleet.root(name) / "current" / "assets" / "photo.jpg").read_bytes() == blob

    fleet.repo.commit({"app.py": "VERSION = 'text'\n" + "print('hello')\n" * 20_000})
    (tmp_path / "delta").mkdir()
    release = build_release(fleet.repo.path, "HEAD", "migrations", tmp_path / "delta")
    previous = json.loads((fleet.root(fleet.names[0]) / "current" / ".release.json").read_text())
    payload = release.payload(previous)
    assert payload.compression == GZIP and payload.files == 1
    assert payload.archive.stat().st_size < 20_000  # 300 KB of code, gzipped
    second = deploy(fleet.settings())
    assert second.release != result.release
    for name in fleet.names:
        assert (fleet.root(name) / "current" / "app.py").read_text().count("hello") == 20_000


def test_hosts_on_different_releases_each_get_their_own_delta(ssh_fleet):
    first = deploy(ssh_fleet.settings())
    ssh_fleet.repo.commit({"only_on_one.txt": "x\n" * 5000})
    deploy(ssh_fleet.settings(hosts=ssh_fleet.names[0]))
    ssh_fleet.repo.commit({"app.py": "VERSION = 'three'\n"})
    third = deploy(ssh_fleet.settings())
    sent = {h["host"]: h["files_sent"] for h in third.hosts}
    assert sent[ssh_fleet.names[0]] == 1  # app.py: it already has only_on_one.txt
    assert all(sent[name] == 2 for name in ssh_fleet.names[1:])  # app.py and the new file
    trees = {_tree(ssh_fleet.roots[n], third.release).__repr__() for n in ssh_fleet.names}
    assert len(trees) == 1
    assert first.release in ssh_fleet.releases(ssh_fleet.names[1])


def test_a_file_edited_in_a_previous_release_is_sent_again(fleet):
    fleet.repo.commit({"data.txt": "original\n"})
    first = deploy(fleet.settings())
    for root in fleet.roots.values():  # someone edits a live release in place
        (root / "releases" / first.release / "data.txt").write_text("tampered\n")
    fleet.repo.bump()
    second = deploy(fleet.settings())
    for root in fleet.roots.values():
        assert (root / "releases" / second.release / "data.txt").read_text() == "original\n"
    assert all(h["files_sent"] == 2 for h in second.hosts)  # app.py, then data.txt repaired


def test_the_build_directory_of_a_killed_deploy_is_removed_by_the_next_one(fleet, tmp_path):
    import subprocess
    import tempfile
    from pathlib import Path

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no process has now
    stale = Path(tempfile.gettempdir()) / f"deploytools-{dead.pid}-x1y2z3"
    stale.mkdir()
    (stale / "tree.tar").write_bytes(b"left by a deploy killed with SIGKILL")
    alive = Path(tempfile.gettempdir()) / f"deploytools-{os.getpid()}-mine"
    alive.mkdir()
    deploy(fleet.settings())
    assert not stale.exists()
    assert alive.exists()  # a live process's directory is never touched
    alive.rmdir()
