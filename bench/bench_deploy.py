"""How long a deploy to three SSH hosts takes: deploytools next to a plain Fabric script.

Starts three sshd hosts on loopback (tests/servers.py), then times, in the same run:

- deploytools: one connection per host, one remote command per phase (4), hosts in parallel,
  TCP_NODELAY, a 1 ms poll;
- baseline: the Fabric script one writes first: Fabric's defaults, one ``c.run`` per step
  (lock, read current, upload, checksum, unpack, rename, link, unlock), host after host.

Prints the median of N deploys for each and their ratio. Run as root (sshd needs it):

    python bench/bench_deploy.py [--runs 10] [--size-kib 512]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import servers  # noqa: E402
from fleet import AppRepo  # noqa: E402

from deploytools.admin import setup  # noqa: E402
from deploytools.config import load_settings  # noqa: E402
from deploytools.deploy import deploy  # noqa: E402
from deploytools.output import Reporter  # noqa: E402


def baseline_deploy(cluster, roots: dict[str, Path], archive: Path, release: str) -> None:
    """What a hand-written Fabric deploy does: step by step, host by host."""
    from fabric import Connection

    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    for host in cluster.hosts:
        root = roots[host.spec]
        with Connection(
            host.address,
            user=host.user,
            port=host.port,
            connect_kwargs={"key_filename": [str(cluster.client_key)]},
        ) as c:
            run = lambda command: c.run(command, hide=True, in_stream=False)  # noqa: E731
            run(f"mkdir {root}/deploy.lock")
            run(f"readlink {root}/current || true")
            c.put(str(archive), f"{root}/releases/{release}.tar.gz")
            out = run(f"sha256sum {root}/releases/{release}.tar.gz").stdout.split()[0]
            assert out == digest
            run(f"mkdir {root}/releases/.{release}")
            run(f"tar -xzf {root}/releases/{release}.tar.gz -C {root}/releases/.{release}")
            run(f"mv {root}/releases/.{release} {root}/releases/{release}")
            run(f"ln -sfn releases/{release} {root}/current")
            run(f"rm -rf {root}/deploy.lock {root}/releases/{release}.tar.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size-kib", type=int, default=512, help="size of the released tree")
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    workdir.chmod(0o755)
    os.environ["HOME"] = str(workdir)  # keep the user's ~/.ssh out, as the tests do
    cluster = servers.start_ssh_cluster(workdir / "ssh")
    try:
        repo = AppRepo(workdir / "app")
        repo.commit(
            {"payload.bin": os.urandom(options.size_kib * 1024).hex()[: options.size_kib * 1024]}
        )
        roots = {h.spec: workdir / f"host{i}" for i, h in enumerate(cluster.hosts, start=1)}
        settings = load_settings(
            {
                "deploy": {
                    "hosts": [{"host": name, "root": str(root)} for name, root in roots.items()],
                    "repo": str(repo.path),
                    "known_hosts": str(cluster.known_hosts),
                    "identity_file": str(cluster.client_key),
                    "keep_releases": 2,
                }
            }
        )
        setup(settings)
        quiet = Reporter(json_mode=True)
        ours, theirs = [], []
        archive = workdir / "release.tar.gz"
        for number in range(options.runs):
            repo.bump()
            started = time.perf_counter()
            deploy(settings, reporter=quiet)
            ours.append(time.perf_counter() - started)

            subprocess.run(
                [
                    "git",
                    "-C",
                    str(repo.path),
                    "archive",
                    "--format=tar.gz",
                    "-o",
                    str(archive),
                    "HEAD",
                ],
                check=True,
            )
            started = time.perf_counter()
            baseline_deploy(cluster, roots, archive, f"baseline-{number}")
            theirs.append(time.perf_counter() - started)
        mine, base = statistics.median(ours), statistics.median(theirs)
        print(f"deploy of {options.size_kib} KiB to 3 SSH hosts, median of {options.runs} runs")
        print(f"  deploytools (4 commands/host, parallel)   {mine * 1000:8.1f} ms")
        print(f"  plain Fabric script (9 commands, serial)  {base * 1000:8.1f} ms")
        print(f"  ratio                                      {base / mine:8.1f}x faster")
        print("  (deploytools also builds the archive and checks it; the baseline's is prebuilt)")
    finally:
        cluster.stop()
        servers.remove_tree(workdir)  # holds the client's private key


if __name__ == "__main__":
    main()
