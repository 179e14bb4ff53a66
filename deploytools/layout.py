"""The host layout (DESIGN §2) and the remote scripts that change it.

Every phase of a deploy is ONE remote command: a POSIX ``sh`` script made of a fixed library
of functions (below) followed by calls whose every argument is quoted with ``shlex.quote``.
Nothing from the config, the release or the user is ever pasted into shell code unquoted.

A script reports on stdout as ``key<TAB>value`` lines and fails with one of the exit codes
in ``Code`` (message on stderr). Work a script has done is undone by its own EXIT trap when
it fails: a lock it took is released, a partial release it unpacked is removed.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from .lock import LockOwner
from .revisions import Revision, parse_revisions

LOCK_DIR = "deploy.lock"
REVISIONS = "revisions.jsonl"
MANIFEST = ".release.json"
REVISIONS_READ = 1000  # lines of revisions.jsonl read back; enough history for any rollback


class Code(IntEnum):
    """Exit codes of the scripts, beyond 0 (done) and 1 (failed, see stderr)."""

    NOT_SET_UP = 64
    LOCKED = 65
    RELEASE_EXISTS = 66
    NO_SPACE = 67
    NO_PYTHON = 68
    SHARED_MISSING = 69
    CHECKSUM = 70
    NO_RELEASE = 71
    UNSAFE = 72


LIBRARY = r"""
set -u
on_failure=:
trap 'status=$?; if [ "$status" -ne 0 ]; then eval "$on_failure"; fi; exit "$status"' EXIT
fail() { code=$1; shift; printf '%s\n' "$*" >&2; exit "$code"; }
emit() { printf '%s\t%s\n' "$1" "$2"; }
undo() { on_failure="$1; $on_failure"; }
replace_path() {
  # rename(2) of $1 over $2: atomic; GNU mv -T, else Python's os.replace
  mv -T -- "$1" "$2" 2>/dev/null ||
    python3 -c 'import os, sys; os.replace(sys.argv[1], sys.argv[2])' "$1" "$2"
}
sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum -- "$1" | cut -d' ' -f1
  else python3 -c 'import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
  fi
}
need_root() {
  [ -d "$root" ] || fail 64 "the deploy root $root does not exist: run 'invoke setup'"
  { [ -d "$root/releases" ] && [ -d "$root/shared" ]; } ||
    fail 64 "$root has no releases/ or shared/: run 'invoke setup'"
}
setup_layout() {
  mkdir -p -- "$root/releases" "$root/shared" || fail 1 "cannot create the layout under $root"
}
make_shared_dir() { mkdir -p -- "$root/shared/$1" || fail 1 "cannot create $root/shared/$1"; }
take_lock() {
  lock_owner=$1
  if ! mkdir -- "$root/deploy.lock" 2>/dev/null; then
    if [ -d "$root/deploy.lock" ]; then
      emit lock "$(cat -- "$root/deploy.lock/owner.json" 2>/dev/null)"
      exit 65
    fi
    fail 1 "cannot create $root/deploy.lock: $(mkdir -- "$root/deploy.lock" 2>&1)"
  fi
  undo release_own_lock
  printf '%s\n' "$lock_owner" > "$root/deploy.lock/owner.json" ||
    fail 1 "cannot write $root/deploy.lock/owner.json"
}
release_own_lock() {
  # only the lock this deploy took: owner.json must still be what it wrote
  if [ -d "$root/deploy.lock" ] &&
     [ "$(cat -- "$root/deploy.lock/owner.json" 2>/dev/null)" = "$lock_owner" ]; then
    rm -rf -- "$root/deploy.lock"
  fi
}
release_lock() { lock_owner=$1; release_own_lock; }
break_lock() {
  if [ -d "$root/deploy.lock" ]; then
    emit lock "$(cat -- "$root/deploy.lock/owner.json" 2>/dev/null)"
    rm -rf -- "$root/deploy.lock" || fail 1 "cannot remove $root/deploy.lock"
  fi
}
show_lock() {
  if [ -d "$root/deploy.lock" ]; then
    emit lock "$(cat -- "$root/deploy.lock/owner.json" 2>/dev/null)"
  fi
}
check_absent() {
  [ ! -e "$root/releases/$1" ] || fail 66 "release $1 already exists in $root/releases"
}
check_space() {
  avail=$(df -Pk -- "$root/releases" 2>/dev/null | awk 'NR == 2 { print $4 }')
  if [ -n "$avail" ] && [ "$avail" -lt "$1" ]; then
    fail 67 "only $avail KiB free under $root/releases; the release needs $1 KiB"
  fi
}
check_shared_file() {
  [ -e "$root/shared/$1" ] ||
    fail 69 "shared file $root/shared/$1 is missing (deploy.shared_files): create it on the host"
}
check_python() {
  out=$(cd -- "$root" && "$@" -c 'import deploytools.datamig' 2>&1) ||
    fail 68 "'$*' cannot import deploytools.datamig ($out): install deploytools for deploy.python"
}
read_state() {
  emit root "$(cd -- "$root" && pwd -P)"
  emit current "$(readlink -- "$root/current" 2>/dev/null)"
  for dir in "$root"/releases/*; do
    [ -d "$dir" ] || continue
    if [ -f "$dir/.release.json" ]; then emit release "${dir##*/}"; fi
  done
  if [ -f "$root/revisions.jsonl" ]; then
    tail -n "$1" -- "$root/revisions.jsonl" | awk '{ print "revision\t" $0 }'
  fi
}
begin_release() {
  release=$1
  archive="$root/releases/.partial-$1.tar.gz"
  partial="$root/releases/.partial-$1"
}
discard_partial() { rm -rf -- "$partial" "$archive"; }
unpack() {
  undo discard_partial
  actual=$(sha256_of "$archive") || fail 1 "cannot read the uploaded archive $archive"
  [ "$actual" = "$1" ] ||
    fail 70 "the uploaded archive has sha256 $actual, expected $1: the upload was corrupted"
  rm -rf -- "$partial" && mkdir -- "$partial" || fail 1 "cannot create $partial"
  tar --no-same-owner -xzf "$archive" -C "$partial" ||
    fail 1 "unpacking the release into $partial failed"
}
write_manifest() {
  printf '%s\n' "$1" > "$partial/.release.json" || fail 1 "cannot write $partial/.release.json"
}
link_shared() {
  # link_shared PATH LINK_TARGET dir|file : replace PATH in the release by a relative link
  [ "$3" = dir ] && make_shared_dir "$1"
  mkdir -p -- "$(dirname -- "$partial/$1")" && rm -rf -- "$partial/$1" &&
    ln -s -- "$2" "$partial/$1" || fail 1 "cannot link shared/$1 into the release"
}
publish() {
  [ ! -e "$root/releases/$release" ] || fail 66 "release $release already exists in $root/releases"
  mv -- "$partial" "$root/releases/$release" || fail 1 "cannot rename $partial to releases/$release"
  rm -f -- "$archive"
}
switch_to() {
  [ -f "$root/releases/$1/.release.json" ] ||
    fail 71 "release $1 is not on this host (no $root/releases/$1/.release.json)"
  emit previous "$(readlink -- "$root/current" 2>/dev/null)"
  tmp="$root/.current.tmp.$$"
  rm -f -- "$tmp" && ln -s -- "releases/$1" "$tmp" || fail 1 "cannot create a link in $root"
  replace_path "$tmp" "$root/current" || { rm -f -- "$tmp"; fail 1 "cannot switch $root/current"; }
}
unlink_current() {
  emit previous "$(readlink -- "$root/current" 2>/dev/null)"
  rm -f -- "$root/current" || fail 1 "cannot remove $root/current"
}
log_revision() {
  printf '%s\n' "$1" >> "$root/revisions.jsonl" || fail 1 "cannot append to $root/revisions.jsonl"
}
remove_release() { rm -rf -- "$root/releases/$1" && emit removed "$1"; }
run_in() {
  dir=$1; shift
  [ -d "$root/$dir" ] || fail 71 "$root/$dir does not exist on this host"
  cd -- "$root/$dir" || fail 1 "cannot enter $root/$dir"
  exec "$@"
}
run_datamig() {
  # run_datamig DIR ARGV... : the runner in <root>/DIR, with this host's root and shared/.env
  abs=$(cd -- "$root" && pwd -P) ||
    fail 64 "the deploy root $root does not exist: run 'invoke setup'"
  dir=$1; shift
  run_in "$dir" "$@" --root "$abs" --env-file "$abs/shared/.env"
}
"""


def _root_assignment(root: str) -> str:
    """``root=…`` for the script: ``~`` is the login user's home, a relative root is relative
    to it (as ssh and scp treat paths), and a leading ``-`` can never read as an option."""
    if root == "~":
        return 'root="$HOME"'
    if root.startswith("~/"):
        return 'root="$HOME"/' + shlex.quote(root[2:])
    if not root.startswith("/"):
        root = "./" + root
    return "root=" + shlex.quote(root)


class Script:
    """A remote script: the library, the root, then calls with quoted arguments."""

    def __init__(self, root: str) -> None:
        self._lines = [_root_assignment(root)]

    def call(self, function: str, *args: str | int) -> Script:
        self._lines.append(" ".join([function, *(shlex.quote(str(arg)) for arg in args)]))
        return self

    def text(self) -> str:
        return LIBRARY + "\n".join(self._lines) + "\n"


def parse_output(stdout: str) -> dict[str, list[str]]:
    """``key<TAB>value`` lines → {key: [values…]}; other lines are ignored."""
    fields: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        key, tab, value = line.partition("\t")
        if tab:
            fields.setdefault(key, []).append(value)
    return fields


def release_id_of_link(link: str | None) -> str | None:
    """``releases/<id>`` (what ``current`` points to) → ``<id>``."""
    if not link:
        return None
    return link.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class HostState:
    """What a host's layout looks like, as read by ``read_state``."""

    root: str = ""  # absolute, symlinks resolved
    current: str | None = None
    releases: list[str] = field(default_factory=list)
    revisions: list[Revision] = field(default_factory=list)
    lock: LockOwner | None = None
    locked: bool = False  # deploy.lock exists (even with an unreadable owner.json)

    @classmethod
    def parse(cls, stdout: str) -> HostState:
        fields = parse_output(stdout)
        lock_values = fields.get("lock", [])
        return cls(
            root=(fields.get("root") or [""])[0],
            current=release_id_of_link((fields.get("current") or [""])[0]),
            releases=sorted(fields.get("release", [])),
            revisions=parse_revisions(fields.get("revision", [])),
            lock=LockOwner.from_json(lock_values[0]) if lock_values else None,
            locked=bool(lock_values),
        )


# -- the scripts, one per phase -----------------------------------------------------------------


def setup_script(root: str, shared_dirs: Iterable[str]) -> str:
    script = Script(root).call("setup_layout")
    for path in shared_dirs:
        script.call("make_shared_dir", path)
    return script.call("read_state", REVISIONS_READ).text()


def lock_state_script(root: str, owner: LockOwner) -> str:
    """Take the lock and read the layout (the first step of a rollback)."""
    script = Script(root).call("need_root").call("take_lock", owner.to_json())
    return script.call("read_state", REVISIONS_READ).text()


def state_script(root: str) -> str:
    """Read-only: layout, releases, revisions and the lock, for releases/rollback/lock.status."""
    return (
        Script(root).call("need_root").call("show_lock").call("read_state", REVISIONS_READ).text()
    )


def lock_release_script(root: str) -> str:
    return Script(root).call("break_lock").text()


def preflight_script(
    root: str,
    *,
    owner: LockOwner,
    release: str,
    need_kb: int,
    shared_files: Iterable[str],
    python: Sequence[str] | None,
) -> str:
    """Take the lock, then check the host can take this release; the lock is released again
    by the script itself if any check fails."""
    script = Script(root).call("need_root").call("take_lock", owner.to_json())
    script.call("check_absent", release).call("check_space", need_kb)
    for path in shared_files:
        script.call("check_shared_file", path)
    if python:
        script.call("check_python", *python)
    return script.call("read_state", REVISIONS_READ).text()


def partial_archive_path(absolute_root: str, release: str) -> str:
    """Where the SFTP upload puts the archive (absolute, as SFTP needs)."""
    return f"{absolute_root.rstrip('/')}/releases/.partial-{release}.tar.gz"


def unpack_script(
    root: str,
    *,
    release: str,
    sha256: str,
    manifest: dict,
    shared_files: Iterable[str],
    shared_dirs: Iterable[str],
) -> str:
    """Verify the uploaded archive, unpack it under a temporary name, write the manifest, link
    shared paths, and rename it into ``releases/<id>``; on failure nothing of it remains."""
    script = Script(root).call("begin_release", release).call("unpack", sha256)
    script.call("write_manifest", json.dumps(manifest, separators=(",", ":")))
    for kind, paths in (("dir", shared_dirs), ("file", shared_files)):
        for path in paths:
            script.call("link_shared", path, shared_link_target(path), kind)
    return script.call("publish").text()


def shared_link_target(path: str) -> str:
    """Relative link from ``releases/<id>/<path>`` to ``shared/<path>``: it survives a root
    that is moved or mounted elsewhere."""
    depth = path.count("/") + 2  # <id>/ and releases/
    return "../" * depth + "shared/" + path


def switch_script(root: str, release: str) -> str:
    return Script(root).call("switch_to", release).text()


def finish_script(root: str, *, owner: LockOwner, revision: Revision, remove: Iterable[str]) -> str:
    """Log the deploy, clean up old releases, release the lock."""
    script = Script(root).call("log_revision", revision.to_line())
    for release in remove:
        script.call("remove_release", release)
    return script.call("release_lock", owner.to_json()).text()


def abort_script(root: str, *, owner: LockOwner | None, discard: str | None) -> str:
    """Undo a deploy that failed before the switch: drop the partial release ``discard`` and
    release our lock. ``current`` is not touched."""
    script = Script(root)
    if discard:
        # releases/<id> was checked absent under our lock, so it is ours to remove
        script.call("begin_release", discard).call("discard_partial").call(
            "remove_release", discard
        )
    if owner is not None:
        script.call("release_lock", owner.to_json())
    return script.text()


def switch_and_unlock_script(
    root: str, *, target: str | None, revision: Revision, owner: LockOwner | None
) -> str:
    """Switch ``current`` to ``target`` (remove it when there was none before), log
    ``revision``, then release our lock: one command, so a host is never left half-restored."""
    script = Script(root)
    if target:
        script.call("switch_to", target)
    else:
        script.call("unlink_current")
    script.call("log_revision", revision.to_line())
    if owner is not None:
        script.call("release_lock", owner.to_json())
    return script.text()


def run_in_script(root: str, directory: str, argv: Sequence[str]) -> str:
    """Run ``argv`` inside ``<root>/<directory>`` (a release, or ``current``)."""
    return Script(root).call("run_in", directory, *argv).text()


def datamig_script(root: str, directory: str, argv: Sequence[str]) -> str:
    """The migration runner ``argv`` inside ``<root>/<directory>``, given ``--root`` (absolute)
    and ``--env-file <root>/shared/.env``."""
    return Script(root).call("run_datamig", directory, *argv).text()


def health_script(root: str, command: str) -> str:
    return run_in_script(root, "current", ["sh", "-c", command])
