"""Which compression the release archive should use: measured, for the archives a deploy sends.

A first deploy (or a host without a usable previous release) gets the whole release in one
archive; later deploys get only the changed files. The client writes the archive with Python's
``tarfile`` (as ``deploy/build.py`` does) and the host unpacks it with ``tar -x`` (as
``scripts/lib.sh`` does). For each candidate the host's ``tar`` can read without extra
packages (none, gzip at levels 1 and 6, xz at preset 0), and for the 5 MB application's code
and the 100 MB application (95 MB of incompressible assets), this prints the client's time to
write it, its size, the time to unpack it, and the total a deploy would wait for at 1 Gbit/s,
100 Mbit/s and 10 Mbit/s (write + size / bandwidth + unpack; the SSH channel's own cost is the
same for every candidate). Rounds are interleaved; medians with their interquartile range.

    python bench/bench_compression.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import benchlib as bl

#: name → (tarfile mode, its options, the host tar's flag)
CANDIDATES = {
    "none": ("w", {}, ""),
    "gzip -1": ("w:gz", {"compresslevel": 1}, "z"),
    "gzip -6": ("w:gz", {"compresslevel": 6}, "z"),
    "xz -0": ("w:xz", {"preset": 0}, "J"),
}
LINKS = {"1 Gbit/s": 1e9 / 8, "100 Mbit/s": 100e6 / 8, "10 Mbit/s": 10e6 / 8}


def release_tree(repo: Path) -> bytes:
    """The release as ``git archive`` gives it: an uncompressed tar of HEAD."""
    return subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", "HEAD"],
        check=True,
        capture_output=True,
    ).stdout


def write_archive(tree: bytes, target: Path, mode: str, options: dict) -> float:
    """Copy every member of ``tree`` into a new archive at ``target``: the seconds it took."""
    started = time.perf_counter()
    with (
        tarfile.open(fileobj=io.BytesIO(tree)) as source,
        tarfile.open(target, mode, format=tarfile.PAX_FORMAT, **options) as out,
    ):
        for member in source:
            data = source.extractfile(member) if member.isfile() else None
            out.addfile(member, data)
    return time.perf_counter() - started


def unpack(archive: Path, flag: str, into: Path) -> float:
    into.mkdir()
    started = time.perf_counter()
    command = ["tar", "--no-same-owner", f"-x{flag}f", str(archive), "-C", str(into)]
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def measure(title: str, repo: Path, rounds: int, scratch: Path) -> None:
    tree = release_tree(repo)
    print(f"\n{title}: {len(tree) / bl.MB:.1f} MB as a tar, {rounds} interleaved rounds")
    figures: dict[str, dict[str, list[float]]] = {
        name: {"write": [], "size": [], "unpack": []} for name in CANDIDATES
    }
    for number in range(rounds):
        for name in bl.rotate(list(CANDIDATES), number):
            mode, options, flag = CANDIDATES[name]
            archive = scratch / f"{number}-{name.replace(' ', '')}.archive"
            figures[name]["write"].append(write_archive(tree, archive, mode, options))
            figures[name]["size"].append(archive.stat().st_size)
            figures[name]["unpack"].append(unpack(archive, flag, scratch / f"{archive.name}.d"))
            bl.cleanup(scratch / f"{archive.name}.d")
            archive.unlink()
    header = f"  {'candidate':10} {'write':>22} {'size':>10} {'unpack':>22}"
    header += "".join(f" {link:>12}" for link in LINKS)
    print(header)
    totals: dict[str, dict[str, float]] = {}
    for name, values in figures.items():
        size = bl.quartiles(values["size"])[1]
        write = bl.quartiles(values["write"])[1]
        unpacked = bl.quartiles(values["unpack"])[1]
        totals[name] = {link: write + size / rate + unpacked for link, rate in LINKS.items()}
        line = (
            f"  {name:10} {bl.spread(values['write'])} {size / bl.MB:7.2f} MB "
            f"{bl.spread(values['unpack'])}"
        )
        line += "".join(f" {totals[name][link]:10.3f} s" for link in LINKS)
        print(line)
    for link in LINKS:
        best = min(totals, key=lambda name: totals[name][link])
        print(f"  fastest at {link}: {best}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    print(f"release archive compression: {bl.machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-compression-") as directory:
        base = Path(directory)
        code = bl.make_app(base / "code")
        measure("the 5 MB application (code only)", code.path, options.rounds, base)
        large = bl.make_app(base / "large", asset_bytes=95 * bl.MB)
        measure("the 100 MB application (95 MB incompressible)", large.path, options.rounds, base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
