"""The delta upload on the wire: what a host receives for a 100 MB application.

Three sshd hosts on loopback, each behind a byte-counting TCP proxy (``tests/servers.py:
CountingProxy``), a clean login user, and an application of 300 text files (5 MB) plus 95 MB
of incompressible assets in git. ``invoke deploy --json`` through the proxies:

1. the first deploy: every host gets the whole release;
2. redeploys that change one text file (``--rounds`` of them): each host gets the delta
   against its current release (expected: under 1 MB);
3. hosts on different releases: host1 is one change behind the new release, host2 two,
   host3 three (``--hosts`` deploys in between); one deploy to all then sends each host its
   own delta.

Prints bytes client→host per host (the SSH stream: payload, plan, scripts, protocol), the
files sent and the wall time; deploytools' own ``bytes_sent`` (its socket's count) beside.

    python bench/bench_upload.py [--rounds 15] [--assets-mb 95]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl

from deploytools.deploy.build import build_release


def file_of(number: int) -> str:
    """The path of text file ``number`` (make_app puts module N in package N % 12)."""
    number %= 300
    return f"app/pkg{number % 12:02d}/module{number:03d}.py"


class Uploads:
    def __init__(self, hosts: bl.BenchHosts, cli: bl.DeployToolsCLI, config_for) -> None:
        self.hosts = hosts
        self.cli = cli
        self.config_for = config_for

    def deploy(self, count: int | None = None) -> tuple[float, list[int], dict]:
        """Deploy HEAD to all hosts (or the first ``count``); seconds, bytes per host (all
        hosts, 0 where nothing was sent) and deploytools' answer."""
        before = self.hosts.traffic()
        args = ["deploy", "--json"]
        if count is not None:
            args += ["--hosts", ",".join(self.hosts.spec(i, True) for i in range(count))]
        timed = self.cli.run(self.config_for, *args)
        after = self.hosts.traffic()
        sent = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
        return timed.seconds, sent, timed.data or {}


def megabytes(count: int) -> str:
    return f"{count / bl.MB:.3f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--assets-mb", type=int, default=95)
    options = parser.parse_args()
    directory = bl.workdir("bench-upload-")
    print(f"delta upload: {bl.machine()}")
    hosts = bl.start_hosts(directory, 3)
    try:
        hosts.add_proxies()
        repo = bl.make_app(directory / "app", asset_bytes=options.assets_mb * bl.MB)
        size = sum(p.stat().st_size for p in repo.path.rglob("*") if ".git" not in p.parts)
        cli = bl.DeployToolsCLI(repo, directory, "deploytools")
        config = cli.configure(
            "proxied",
            {
                "hosts": hosts.entries(3, "upload", proxied=True),
                "root": hosts.root(0, "upload"),
                "known_hosts": str(hosts.cluster.known_hosts),
                "identity_file": str(hosts.cluster.client_key),
            },
        )
        uploads = Uploads(hosts, cli, config)
        cli.run(config, "setup")
        print(f"  application: {size / bl.MB:.1f} MB in git (300 text files, 5 MB; the rest "
              f"incompressible assets); 3 hosts; login user {hosts.user}")  # fmt: skip

        seconds, sent, report = uploads.deploy()
        print(f"  first deploy ({seconds:.2f} s): " + per_host(sent, report))

        times, rounds, phases = [], [], []
        for number in range(1, options.rounds + 1):
            bl.change_text_file(repo, file_of(number), number)
            seconds, sent, report = uploads.deploy()
            times.append(seconds)
            rounds.append(sent)
            phases.append(report["phases"])
            print(f"  round {number}: {seconds:.2f} s, {sent}", file=sys.stderr)
        print(f"  one changed text file, {options.rounds} redeploys: {bl.spread(times)}")
        for index in range(3):
            column = [r[index] for r in rounds]
            print(f"    host{index + 1}: {bl.spread(column, 'B', 0)} client→host")
        names = list(dict.fromkeys(n for p in phases for n in p))
        shown = ", ".join(
            f"{n} {bl.quartiles([p.get(n, 0) for p in phases])[1]:.3f}" for n in names
        )
        print(f"    phases, median s: {shown}")
        worst = max(max(r) for r in rounds)
        verdict = "met" if worst < bl.MB else "NOT met"
        print(f"    target: under 1 MB per host: largest {megabytes(worst)}, {verdict}")
        # what the next one-file redeploy consists of, built here as the deploy builds it
        bl.change_text_file(repo, file_of(999), 999)
        current = hosts.local(0, "upload") / "current" / ".release.json"
        archive, plan = payload_sizes(repo.path, json.loads(current.read_text()))
        counter = bl.CommandCounter(directory, hosts.user)
        if counter.available:
            with counter.counting():
                seconds, sent, report = uploads.deploy()
            lines = counter.sizes.get(hosts.hosts[0].address, [])
        else:
            seconds, sent, report = uploads.deploy()
            lines = []
        commands = report["hosts"][0]["commands"]
        scripts = sum(lines)
        shown = " + ".join(f"{n:,}" for n in lines) if lines else "not measured (needs root)"
        print(
            f"    what one of them sends host1 ({sent[0]:,} B): the archive of the changed "
            f"file {archive:,} B, the plan (manifest, checksums) {plan:,} B, the {commands} "
            f"command lines (each with the shell functions it uses) {scripts:,} B ({shown}), "
            f"the rest {sent[0] - archive - plan - scripts:,} B (SSH handshake, SFTP, framing)"
        )

        # host3 stays one release behind host2, which stays one behind host1
        bl.change_text_file(repo, file_of(1001), 1001)
        uploads.deploy(2)
        bl.change_text_file(repo, file_of(1002), 1002)
        uploads.deploy(1)
        bl.change_text_file(repo, file_of(1003), 1003)
        seconds, sent, report = uploads.deploy()
        print(
            f"  hosts on different releases (host1 1 change behind, host2 2, host3 3), "
            f"{seconds:.2f} s: " + per_host(sent, report)
        )
        costs(repo.path, hosts, directory, size)
    finally:
        hosts.stop()
        bl.cleanup(directory)
    return 0


def payload_sizes(repo: Path, previous: dict) -> tuple[int, int]:
    """(archive, plan) bytes a host on the release with manifest ``previous`` receives."""
    with tempfile.TemporaryDirectory(prefix="bench-upload-build-") as directory:
        release = build_release(repo, "HEAD", "migrations", Path(directory))
        payload = release.payload(previous)
        return payload.archive.stat().st_size, payload.plan.stat().st_size


def costs(repo: Path, hosts: bl.BenchHosts, directory: Path, size: int) -> None:
    """What a redeploy of the large application costs whatever it sends: the client builds
    and hashes the whole tree; each host links the previous release and checks every file."""
    print(f"  work on the whole {size / bl.MB:.0f} MB, whatever changed (median of 3):")
    times = []
    for _ in range(3):
        with tempfile.TemporaryDirectory(prefix="bench-upload-build-") as workdir:
            started = time.perf_counter()
            build_release(repo, "HEAD", "migrations", Path(workdir))
            times.append(time.perf_counter() - started)
    print(f"    client: build (git archive, sha256 of every file): {bl.spread(times)}")
    release = (hosts.local(0, "upload") / "current").resolve()
    manifest = json.loads((release / ".release.json").read_text())
    sums = directory / "sums"
    sums.write_text("".join(f"{f['sha256']}  {f['path']}\n" for f in manifest["files"]))
    sums.chmod(0o644)
    check = ["sh", "-c", f"cd {shlex.quote(str(release))} && sha256sum -c --quiet {sums}"]
    copy = hosts.local(0, "upload") / "releases" / ".bench-copy"
    link = ["cp", "-al", "--", str(release), str(copy)]
    checks, links = [], []
    for _ in range(3):
        checks.append(timed_as(hosts.user, check))
        links.append(timed_as(hosts.user, link))
        subprocess.run(["rm", "-rf", "--", str(copy)], check=True)
    print(f"    host: sha256sum -c of every file of the release: {bl.spread(checks)}")
    print(f"    host: cp -al of the previous release: {bl.spread(links)}")


def timed_as(user: str, argv: list[str]) -> float:
    if bl.is_root() and user != "root":
        argv = ["runuser", "-u", user, "--", *argv]
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def per_host(sent: list[int], answer: dict) -> str:
    report = answer.get("hosts", [])
    cells = []
    for index, count in enumerate(sent):
        files = report[index]["files_sent"] if index < len(report) else "?"
        cells.append(f"host{index + 1} {count:,} B ({files} files)")
    return "; ".join(cells)


if __name__ == "__main__":
    sys.exit(main())
