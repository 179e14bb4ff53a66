"""Building a release: the archive of the git tree at a ref, its id, manifest and safety check.

This is the only phase that runs locally. Everything wrong with a release (unknown ref, unsafe
archive member, malformed migration names) is found here, before any host is contacted.
"""

from __future__ import annotations

import hashlib
import posixpath
import subprocess
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..exceptions import ConfigError, UsageError
from ..lock import deployer


@dataclass(frozen=True)
class Release:
    """A built release, ready to upload: one id for every host."""

    id: str
    sha: str
    ref: str
    built_at: str
    built_by: str
    archive: Path
    sha256: str
    size: int  # bytes of the compressed archive
    unpacked_size: int  # bytes of the files in it
    migrations: tuple[str, ...]  # migration files as "<version>_<name>", in version order

    def manifest(self) -> dict[str, str]:
        """The ``.release.json`` written on each host once the archive's sha256 is verified."""
        return {
            "id": self.id,
            "sha": self.sha,
            "ref": self.ref,
            "built_at": self.built_at,
            "built_by": self.built_by,
            "sha256": self.sha256,
        }

    @property
    def need_kb(self) -> int:
        """Room a host needs: the archive plus the unpacked tree, with a margin for blocks."""
        return (self.size + self.unpacked_size * 5 // 4) // 1024 + 1024


def release_id(built_at: datetime, short_sha: str) -> str:
    """``YYYYMMDDHHMMSS-<short sha>`` in UTC: sorts by build time, names the commit."""
    return built_at.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "-" + short_sha


def _git(repo: Path, *args: str) -> str:
    try:
        completed = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise ConfigError("git is not installed on this machine; it builds the release") from None
    if completed.returncode != 0:
        raise UsageError(f"git {' '.join(args)} failed in {repo}: {completed.stderr.strip()}")
    return completed.stdout.strip()


def resolve_commit(repo: Path, ref: str) -> tuple[str, str]:
    """(full sha, short sha) of ``ref``; a clear error for a missing repo or unknown ref."""
    if not repo.is_dir():
        raise ConfigError(f"deploy.repo {repo} does not exist")
    try:
        _git(repo, "rev-parse", "--is-inside-work-tree")
    except UsageError:
        raise ConfigError(f"deploy.repo {repo} is not a git work tree") from None
    try:
        sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except UsageError:
        raise UsageError(f"--ref {ref!r} is not a commit, branch or tag in {repo}") from None
    return sha, _git(repo, "rev-parse", "--short=7", sha)


def check_archive(path: Path) -> tuple[int, list[str]]:
    """Refuse members that could land outside the release: absolute paths, ``..``, links
    leaving the tree, devices. Returns (unpacked bytes, member names)."""
    total = 0
    names = []
    with tarfile.open(path) as archive:
        for member in archive:
            name = member.name
            parts = [part for part in name.split("/") if part not in ("", ".")]
            problem = None
            if name.startswith("/"):
                problem = "has an absolute path"
            elif ".." in parts:
                problem = "contains '..'"
            elif member.issym() or member.islnk():
                link = member.linkname
                base = posixpath.dirname("/".join(parts)) if member.issym() else ""
                resolved = posixpath.normpath(posixpath.join(base, link))
                if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    problem = f"is a link leaving the release (-> {link})"
            elif not (member.isfile() or member.isdir()):
                problem = "is a device, fifo or other special file"
            if problem:
                raise UsageError(
                    f"the release archive member {name!r} {problem}: refused, nothing was uploaded"
                )
            total += member.size
            names.append("/".join(parts))
    return total, names


def migration_names(members: list[str], migrations_path: str) -> list[str]:
    """File names directly inside the migrations folder of the archive."""
    folder = "/".join(part for part in migrations_path.split("/") if part not in ("", "."))
    prefix = folder + "/" if folder else ""
    return [
        member[len(prefix) :]
        for member in members
        if member.startswith(prefix) and "/" not in member[len(prefix) :] and member.endswith(".py")
    ]


def build_release(repo: Path, ref: str, migrations_path: str, directory: Path) -> Release:
    """``git archive`` of ``ref`` into ``directory``, checked and described."""
    sha, short = resolve_commit(repo, ref)
    built = datetime.now(UTC)
    rid = release_id(built, short)
    archive = directory / f"{rid}.tar.gz"
    with archive.open("wb") as out:
        completed = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar.gz", sha],
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )
    if completed.returncode != 0:
        raise UsageError(f"git archive {ref} failed: {completed.stderr.decode(errors='replace')}")
    unpacked, members = check_archive(archive)

    from ..datamig.discovery import check_migration_names

    migrations = check_migration_names(migration_names(members, migrations_path))
    digest = hashlib.sha256()
    with archive.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    user, host = deployer()
    return Release(
        id=rid,
        sha=sha,
        ref=ref,
        built_at=built.strftime("%Y-%m-%dT%H:%M:%SZ"),
        built_by=f"{user}@{host}",
        archive=archive,
        sha256=digest.hexdigest(),
        size=archive.stat().st_size,
        unpacked_size=unpacked,
        migrations=tuple(f"{m.version}_{m.name}" for m in migrations),
    )
