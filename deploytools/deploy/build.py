"""Building a release: the tree of the git ref (after ``deploy.build``), its manifest, checks,
and the archive each host needs.

This is the only phase that runs locally. Everything wrong with a release (unknown ref, unsafe
member, malformed or uncompilable migrations, a lock file that installs the release itself) is
found here, before any host is contacted.

The manifest (DESIGN §8) lists every file with its size, sha256 and mode, and every symlink with
its target. A host that already has a release receives only what differs from it
(``Release.payload``): the host hard-links the rest from that release and verifies the whole
tree against the manifest.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError, MigrationFileError, UsageError
from ..lock import deployer

LOCK_FILES = ("uv.lock", "requirements.lock", "requirements.txt")
#: gzip level 1 for archives that compress (code, ~4x for 45 ms per 5 MB), none for those
#: that do not (images, wheels: gzip would spend 1.5 s per 100 MB to save 4%); measured by
#: bench/bench_compression.py
GZIP, NONE = "z", ""
SMALL_FILE = 64 * 1024  # files below this count as code; larger ones are sampled
SAMPLE = 16 * 1024


@dataclass(frozen=True)
class Entry:
    """One file or symlink of the release."""

    path: str
    mode: int = 0o644
    size: int = 0
    sha256: str = ""
    target: str | None = None  # symlinks only
    offset: int = 0  # where its bytes are in the full tar
    mtime: int = 0  # the commit's time, as git archive sets it

    @property
    def is_link(self) -> bool:
        return self.target is not None

    def same_as(self, other: dict[str, Any]) -> bool:
        """Whether a previous manifest's entry holds exactly this file (or link)."""
        if self.is_link:
            return other.get("target") == self.target
        return (
            other.get("sha256") == self.sha256
            and other.get("size") == self.size
            and other.get("mode") == f"{self.mode & 0o777:o}"
        )


@dataclass(frozen=True)
class LockFile:
    """The release's lock file, which names its Python environment."""

    name: str
    content: bytes
    kind: str  # "uv.lock" or "requirements"


@dataclass(frozen=True)
class Payload:
    """What one host receives: an archive of the files it lacks, and the plan."""

    archive: Path
    archive_sha256: str
    plan: Path
    plan_sha256: str
    previous: str | None  # the release the host reuses files from
    files: int  # files in the archive
    size: int  # bytes of archive + plan
    compression: str = GZIP  # the host's tar flag for the archive


@dataclass
class Release:
    """A built release, ready to upload: one id for every host."""

    id: str
    sha: str
    ref: str
    built_at: str
    built_by: str
    tree: Path  # the full, uncompressed tar of the release
    entries: dict[str, Entry]
    migrations: tuple[str, ...]  # migration files as "<version>_<name>", in version order
    lock_file: LockFile | None
    workdir: Path
    _payloads: dict[str | None, Payload] = field(default_factory=dict, repr=False)
    _payload_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def unpacked_size(self) -> int:
        return sum(entry.size for entry in self.entries.values())

    @property
    def size(self) -> int:
        """Bytes of a full upload (before compression)."""
        return self.tree.stat().st_size

    @property
    def need_kb(self) -> int:
        """Room a host needs: the unpacked tree and its archive, with a margin for blocks."""
        return (self.unpacked_size * 9 // 4) // 1024 + 1024

    def manifest(self) -> dict[str, Any]:
        """``.release.json``: written on each host once every file is verified."""
        files = [e for e in self.entries.values() if not e.is_link]
        links = [e for e in self.entries.values() if e.is_link]
        return {
            "id": self.id,
            "sha": self.sha,
            "ref": self.ref,
            "built_at": self.built_at,
            "built_by": self.built_by,
            "files": [
                {"path": e.path, "size": e.size, "sha256": e.sha256, "mode": f"{e.mode & 0o777:o}"}
                for e in files
            ],
            "links": [{"path": e.path, "target": e.target} for e in links],
        }

    def payload(self, previous: dict[str, Any] | None) -> Payload:
        """The archive for a host whose current release has manifest ``previous`` (None: a
        first deploy, or no usable release): only new or changed entries. Built once per
        previous release and shared by the hosts on it."""
        previous_id = previous.get("id") if previous else None
        if not isinstance(previous_id, str) or not _usable(previous or {}):
            previous, previous_id = None, None
        with self._payload_lock:  # hosts upload in parallel; each payload is built once
            if previous_id not in self._payloads:
                self._payloads[previous_id] = self._build_payload(previous, previous_id)
            return self._payloads[previous_id]

    def _build_payload(self, previous: dict[str, Any] | None, previous_id: str | None) -> Payload:
        old: dict[str, dict[str, Any]] = {}
        if previous:
            for item in [*previous.get("files", []), *previous.get("links", [])]:
                if isinstance(item, dict) and isinstance(item.get("path"), str):
                    old[item["path"]] = item
        send = [e for e in self.entries.values() if e.path not in old or not e.same_as(old[e.path])]
        remove = sorted(
            path for path in old if path not in self.entries or self.entries[path] in send
        )
        name = previous_id or "full"
        archive = self.workdir / f"{name}.archive"
        compression = self._write_archive(archive, send)
        plan = self.workdir / f"{name}.plan"
        self._write_plan(plan, remove)
        payload = Payload(
            archive=archive,
            archive_sha256=_sha256_file(archive),
            plan=plan,
            plan_sha256=_sha256_file(plan),
            previous=previous_id,
            files=len(send),
            size=archive.stat().st_size + plan.stat().st_size,
            compression=compression,
        )
        return payload

    def repair_archive(self, paths: Iterable[str], name: str) -> tuple[Path, str, str]:
        """An archive of ``paths`` alone: the files a host could not verify, sent again.
        Returns its path, sha256 and compression."""
        archive = self.workdir / f"repair-{name}.archive"
        compression = self._write_archive(
            archive, [self.entries[p] for p in paths if p in self.entries]
        )
        return archive, _sha256_file(archive), compression

    def _write_archive(self, path: Path, entries: list[Entry]) -> str:
        """Write the archive of ``entries``; returns its compression (``compression_for``)."""
        compression = self.compression_for(entries)
        mode = "w:gz" if compression == GZIP else "w"
        options = {"compresslevel": 1} if compression == GZIP else {}
        with (
            tarfile.open(self.tree) as tree,
            tarfile.open(path, mode, format=tarfile.PAX_FORMAT, **options) as out,
        ):
            for entry in sorted(entries, key=lambda e: e.path):
                info = tarfile.TarInfo(entry.path)
                info.mode = entry.mode & 0o777
                info.mtime = entry.mtime
                if entry.is_link:
                    info.type = tarfile.SYMTYPE
                    info.linkname = entry.target or ""
                    out.addfile(info)
                    continue
                info.size = entry.size
                tree.fileobj.seek(entry.offset)  # type: ignore[union-attr]
                out.addfile(info, _Slice(tree.fileobj, entry.size))
        return compression

    def compression_for(self, entries: list[Entry]) -> str:
        """gzip, unless the bytes would hardly shrink: small files count as code (they
        compress), each large one by how well its first 16 KB compresses."""
        files = [e for e in entries if not e.is_link]
        total = sum(e.size for e in files)
        if not total:
            return GZIP
        expected = 0.0
        with open(self.tree, "rb") as tree:
            for entry in files:
                if entry.size < SMALL_FILE:
                    expected += entry.size * 0.5
                    continue
                tree.seek(entry.offset)
                sample = tree.read(SAMPLE)
                ratio = len(zlib.compress(sample, 1)) / max(len(sample), 1)
                expected += entry.size * min(ratio, 1.0)
        return GZIP if expected < 0.9 * total else NONE

    def _write_plan(self, path: Path, remove: list[str]) -> None:
        files = sorted((e for e in self.entries.values() if not e.is_link), key=lambda e: e.path)
        links = sorted((e for e in self.entries.values() if e.is_link), key=lambda e: e.path)
        members = {
            "manifest.json": json.dumps(self.manifest(), separators=(",", ":")) + "\n",
            "REVISION": self.sha + "\n",
            "paths": "".join(f"{p}\n" for p in sorted(self.entries)),
            "sums": "".join(f"{e.sha256}  {e.path}\n" for e in files),
            "executable": "".join(f"{e.path}\n" for e in files if e.mode & 0o111),
            "links": "".join(f"{e.path}\n{e.target}\n" for e in links),
            "remove": "".join(f"{p}\n" for p in remove),
        }
        with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=1) as plan:
            for name, text in members.items():
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                plan.addfile(info, io.BytesIO(data))


def _usable(manifest: dict[str, Any]) -> bool:
    return isinstance(manifest.get("files"), list)


class _Slice(io.RawIOBase):
    """``size`` bytes of a file from its current position (to copy a tar member's data)."""

    def __init__(self, file: Any, size: int) -> None:
        self.file, self.left = file, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.file.read(n)
        self.left -= len(data)
        return data


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def uncommitted_changes(repo: Path) -> list[str]:
    """Paths with uncommitted changes in the work tree (they are NOT in the release)."""
    completed = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode:
        return []
    return [line[3:] for line in completed.stdout.splitlines() if line.strip()]


def _problem(member: tarfile.TarInfo, parts: list[str]) -> str | None:
    name = member.name
    if name.startswith("/"):
        return "has an absolute path"
    if ".." in parts:
        return "contains '..'"
    if any(ord(ch) < 32 or ch == "\x7f" for ch in name):
        return "has a control character (a newline?) in its name"
    if member.issym() or member.islnk():
        link = member.linkname
        base = posixpath.dirname("/".join(parts)) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, link))
        if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
            return f"is a link leaving the release (-> {link})"
        if member.islnk():
            return "is a hard link"
        return None
    if not (member.isfile() or member.isdir()):
        return "is a device, fifo or other special file"
    return None


def check_archive(path: Path) -> tuple[int, list[str]]:
    """Refuse members that could land outside the release: absolute paths, ``..``, links
    leaving the tree, devices, control characters. Returns (unpacked bytes, member names)."""
    entries = read_entries(path)
    return sum(e.size for e in entries.values()), list(entries)


def read_entries(path: Path) -> dict[str, Entry]:
    """Every file and symlink of a tar, hashed, checked as ``check_archive`` says."""
    entries: dict[str, Entry] = {}
    with tarfile.open(path) as archive:
        for member in archive:
            parts = [part for part in member.name.split("/") if part not in ("", ".")]
            problem = _problem(member, parts)
            if problem:
                raise UsageError(
                    f"the release member {member.name!r} {problem}: refused, nothing was uploaded"
                )
            name = "/".join(parts)
            if member.isdir() or not name:
                continue
            if member.issym():
                entries[name] = Entry(name, 0o777, target=member.linkname, mtime=int(member.mtime))
                continue
            digest = hashlib.sha256()
            source = archive.extractfile(member)
            assert source is not None
            while chunk := source.read(1 << 20):
                digest.update(chunk)
            entries[name] = Entry(
                name,
                0o755 if member.mode & 0o111 else 0o644,
                member.size,
                digest.hexdigest(),
                offset=member.offset_data,
                mtime=int(member.mtime),
            )
    return entries


def migration_names(members: Iterable[str], migrations_path: str) -> list[str]:
    """File names directly inside the migrations folder of the release."""
    folder = "/".join(part for part in migrations_path.split("/") if part not in ("", "."))
    prefix = folder + "/" if folder else ""
    return [
        member[len(prefix) :]
        for member in members
        if member.startswith(prefix) and "/" not in member[len(prefix) :] and member.endswith(".py")
    ]


def _has_migrations_folder(entries: dict[str, Entry], migrations_path: str) -> bool:
    folder = "/".join(part for part in migrations_path.split("/") if part not in ("", "."))
    return not folder or any(path.startswith(folder + "/") for path in entries)


def check_migration_source(filename: str, source: bytes) -> None:
    """A migration must compile and define ``run``: found at build time, exit 2, before any
    connection (the check step on the host then imports it for real)."""
    try:
        tree = ast.parse(compile(source, filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True))
    except SyntaxError as error:
        if "codec can't decode" in str(error.msg):  # compile() reports bad bytes this way
            raise MigrationFileError(
                f"migration {filename} is not valid UTF-8 Python ({error.msg}); save it as UTF-8"
            ) from None
        raise MigrationFileError(
            f"migration {filename} does not compile: {error.msg} (line {error.lineno}); "
            "fix the file, then deploy again"
        ) from None
    except (UnicodeDecodeError, ValueError) as error:
        raise MigrationFileError(
            f"migration {filename} is not valid UTF-8 Python ({error}); save it as UTF-8"
        ) from None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "run":
            return
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.ImportFrom | ast.Import):
            names = (
                [alias.asname or alias.name for alias in node.names]
                if isinstance(node, ast.Import | ast.ImportFrom)
                else [
                    t.id
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)
                ]
            )
            if "run" in names:
                return
    raise MigrationFileError(
        f"migration {filename} has no run(ctx) function; every migration must define run(ctx)"
    )


def find_lock_file(
    entries: dict[str, Entry], tree: Path, requirements: str | None, venv: str
) -> LockFile | None:
    """The release's lock file (``deploy.requirements``, else the first of LOCK_FILES)."""
    if venv == "off":
        return None
    names = [requirements] if requirements else list(LOCK_FILES)
    for name in names:
        entry = entries.get(name)
        if entry is None or entry.is_link:
            continue
        with tarfile.open(tree) as archive:
            archive.fileobj.seek(entry.offset)  # type: ignore[union-attr]
            content = archive.fileobj.read(entry.size)  # type: ignore[union-attr]
        kind = "uv.lock" if name.endswith("uv.lock") else "requirements"
        if kind == "requirements":
            _refuse_installing_the_release(name, content)
        return LockFile(name, content, kind)
    if requirements:
        raise ConfigError(f"deploy.requirements {requirements!r} is not in the release")
    return None


def _refuse_installing_the_release(name: str, content: bytes) -> None:
    for number, raw in enumerate(content.decode(errors="replace").splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        words = line.replace("=", " ").split()
        if words and words[0] in ("-e", "--editable"):
            words = words[1:]
        target = words[0] if words else ""
        if target in (".", "./", "file:.", "file:./") or target.startswith(("./[", ".[")):
            raise UsageError(
                f"{name}:{number} installs the release itself ({raw.strip()!r}): the "
                "environment is shared by releases and the release's code is imported from "
                "its own directory. Remove the line (list the dependencies instead)."
            )


def _run_build_commands(
    commands: Iterable[str], directory: Path, on_line: Callable[[str], None]
) -> None:
    """``deploy.build`` in a clean export of the ref: its outputs become part of the release."""
    for command in commands:
        on_line(f"$ {command}")
        process = subprocess.Popen(
            ["sh", "-c", command],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert process.stdout is not None
        tail: list[str] = []
        for line in process.stdout:
            on_line(line.rstrip("\n"))
            tail = [*tail[-19:], line.rstrip("\n")]
        if process.wait() != 0:
            raise UsageError(
                f"build command `{command}` exited {process.returncode}; nothing was uploaded:\n"
                + "\n".join(tail)
            )


def build_release(
    repo: Path,
    ref: str,
    migrations_path: str,
    directory: Path,
    *,
    build: Iterable[str] = (),
    migrations_path_explicit: bool = False,
    requirements: str | None = None,
    venv: str = "auto",
    on_line: Callable[[str], None] = lambda line: None,
) -> Release:
    """The release of ``ref``: exported from git (after ``build`` commands in a clean export),
    checked, hashed and described, in ``directory``."""
    sha, short = resolve_commit(repo, ref)
    built = datetime.now(UTC)
    rid = release_id(built, short)
    tree = directory / "tree.tar"
    with tree.open("wb") as out:
        completed = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar", sha],
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )
    if completed.returncode != 0:
        raise UsageError(f"git archive {ref} failed: {completed.stderr.decode(errors='replace')}")
    commands = list(build)
    if commands:
        tree = _built_tree(tree, directory, commands, on_line)
    entries = read_entries(tree)

    if migrations_path_explicit and not _has_migrations_folder(entries, migrations_path):
        raise ConfigError(
            f"datamig.path {migrations_path!r} is not in the release ({ref}); fix the path "
            "or remove the key (without it, a missing migrations/ means no migrations)"
        )
    from ..datamig.discovery import check_migration_names

    names = migration_names(entries, migrations_path)
    migrations = check_migration_names(names)
    folder = "/".join(part for part in migrations_path.split("/") if part not in ("", "."))
    with tarfile.open(tree) as archive:
        for migration in migrations:
            entry = entries[f"{folder}/{migration.filename}" if folder else migration.filename]
            archive.fileobj.seek(entry.offset)  # type: ignore[union-attr]
            source = archive.fileobj.read(entry.size)  # type: ignore[union-attr]
            check_migration_source(migration.filename, source)
    lock_file = find_lock_file(entries, tree, requirements, venv)
    user, host = deployer()
    return Release(
        id=rid,
        sha=sha,
        ref=ref,
        built_at=built.strftime("%Y-%m-%dT%H:%M:%SZ"),
        built_by=f"{user}@{host}",
        tree=tree,
        entries=entries,
        migrations=tuple(f"{m.version}_{m.name}" for m in migrations),
        lock_file=lock_file,
        workdir=directory,
    )


def _built_tree(
    tree: Path, directory: Path, commands: list[str], on_line: Callable[[str], None]
) -> Path:
    """Export ``tree`` into a scratch directory, run the build commands there, and tar the
    result (never the developer's work tree)."""
    read_entries(tree)  # refuse an unsafe export before unpacking it
    export = Path(tempfile.mkdtemp(prefix="export-", dir=directory))
    with tarfile.open(tree) as archive:
        if hasattr(tarfile, "tar_filter"):  # Python 3.11.4+; Debian 12's is 3.11.2
            archive.extractall(export, filter="tar")
        else:
            archive.extractall(export)  # read_entries above refused what could escape
    _run_build_commands(commands, export, on_line)
    built = directory / "built.tar"
    with tarfile.open(built, "w", format=tarfile.PAX_FORMAT) as out:
        for path in sorted(export.rglob("*")):
            relative = path.relative_to(export).as_posix()
            if path.is_dir() and not path.is_symlink():
                continue
            out.add(path, arcname=relative, recursive=False)
    shutil.rmtree(export, ignore_errors=True)
    os.unlink(tree)
    return built
