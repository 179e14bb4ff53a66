"""The host layout (DESIGN §2) and the remote scripts that change it, one per phase.

Every phase of a deploy is ONE remote command: a POSIX ``sh`` script made of the packaged
library ``scripts/lib.sh`` followed by calls whose every argument is quoted with
``shlex.quote``. Nothing from the config, the release or the user is ever pasted into shell
code unquoted.

A script reports on stdout as ``key<TAB>value`` lines and fails with one of the exit codes in
``Code`` (message on stderr). Work a script has done is undone by its own EXIT trap when it
fails: a lock it took is released, a partial release it unpacked is removed.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cache
from importlib import resources

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
    LOCK_LOST = 73
    MISMATCH = 74
    STILL_RUNNING = 75
    INSTALL_FAILED = 76
    HELD_OPEN = 77
    HOOK_FAILED = 78
    HEALTH_FAILED = 79


@cache
def library() -> str:
    """The shell library scripts are made from."""
    return resources.files("deploytools").joinpath("scripts/lib.sh").read_text()


@cache
def _library_parts() -> tuple[str, dict[str, str]]:
    """The library's preamble (options, the EXIT trap) and the text of each function; comment
    lines are dropped (they cost bytes on the wire, every command)."""
    preamble: list[str] = []
    functions: dict[str, str] = {}
    current = None
    for line in library().splitlines(keepends=True):
        if current is None:
            start = _FUNCTION.match(line)
            if start:
                functions[start[1]] = line
                current = None if line.rstrip().endswith("}") else start[1]
            elif line.strip() and not line.lstrip().startswith("#"):
                preamble.append(line)
            continue
        if not line.lstrip().startswith("#"):
            functions[current] += line
        if line.startswith("}"):
            current = None
    return "".join(preamble), functions


@cache
def _needed(names: frozenset[str]) -> tuple[str, ...]:
    """``names`` and every library function they use, in library order."""
    preamble, functions = _library_parts()
    needed: set[str] = set()
    todo = [n for n in names | set(_WORD.findall(preamble)) if n in functions]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += [w for w in _WORD.findall(functions[name]) if w in functions]
    return tuple(name for name in functions if name in needed)


def library_for(names: Iterable[str]) -> str:
    """The part of the library a script calling ``names`` needs (all of it for no names)."""
    preamble, functions = _library_parts()
    chosen = _needed(frozenset(names)) if names else tuple(functions)
    return preamble + "".join(functions[name] for name in chosen)


_FUNCTION = re.compile(r"^([a-z_]+)\(\) \{")
_WORD = re.compile(r"[a-z_]+")


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
    """A remote script: the library functions it uses, the root, then calls with quoted
    arguments."""

    def __init__(self, root: str) -> None:
        self._lines = [_root_assignment(root)]
        self._calls: list[str] = []

    def call(self, function: str, *args: str | int | float) -> Script:
        self._calls.append(function)
        self._lines.append(" ".join([function, *(shlex.quote(str(arg)) for arg in args)]))
        return self

    def text(self) -> str:
        return library_for(self._calls) + "\n".join(self._lines) + "\n"


def _holding(root: str, owner: LockOwner) -> Script:
    """A script that first proves the deploy lock is still ``owner``'s and records its phase."""
    return Script(root).call("need_root").call("hold_lock", owner.token, owner.to_json())


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
    """What a host's layout looks like, as the scripts report it."""

    root: str = ""  # absolute, symlinks resolved
    current: str | None = None
    releases: list[str] = field(default_factory=list)
    revisions: list[Revision] = field(default_factory=list)
    lock: LockOwner | None = None
    locked: bool = False  # deploy.lock exists (even with an unreadable owner.json)
    runner_pid: int | None = None  # a migration runner recorded in the lock still runs
    manifest: dict | None = None  # .release.json of the current release
    venv_python: str | None = None  # version of deploy.venv_python on the host
    uv: str | None = None  # uv's path on the host, if any
    wheels: dict[str, str] = field(default_factory=dict)  # wheel directory -> digest

    @classmethod
    def parse(cls, stdout: str) -> HostState:
        fields = parse_output(stdout)

        def first(key: str) -> str | None:
            values = fields.get(key)
            return values[0] if values else None

        lock_values = fields.get("lock", [])
        manifest = None
        if first("manifest"):
            try:
                manifest = json.loads(first("manifest") or "")
            except ValueError:
                manifest = None
        runner = first("runner")
        return cls(
            root=first("root") or "",
            current=release_id_of_link(first("current")),
            releases=sorted(fields.get("release", [])),
            revisions=parse_revisions(fields.get("revision", [])),
            lock=LockOwner.from_json(lock_values[0], first("lock_token") or "")
            if lock_values
            else None,
            locked=bool(lock_values),
            runner_pid=int(runner) if runner and runner.isdigit() else None,
            manifest=manifest if isinstance(manifest, dict) else None,
            venv_python=first("venv_python"),
            uv=first("uv") or None,
            wheels=dict(
                value.split("\t", 1) for value in fields.get("wheels", []) if "\t" in value
            ),
        )


# -- the scripts, one per phase -----------------------------------------------------------------


def setup_script(root: str, shared_dirs: Iterable[str]) -> str:
    script = Script(root).call("setup_layout")
    for path in shared_dirs:
        script.call("make_shared_dir", path)
    return script.call("read_state", REVISIONS_READ).text()


def lock_state_script(root: str, owner: LockOwner) -> str:
    """Take the lock and read the layout (the first step of a rollback or a datamig.apply)."""
    script = Script(root).call("need_root").call("take_lock", owner.token, owner.to_json())
    return script.call("read_state", REVISIONS_READ).text()


def state_script(root: str) -> str:
    """Read-only: layout, releases, revisions and the lock, for releases/rollback/lock.status."""
    return (
        Script(root).call("need_root").call("show_lock").call("read_state", REVISIONS_READ).text()
    )


def lock_release_script(root: str) -> str:
    return Script(root).call("break_lock").text()


@dataclass(frozen=True)
class EnvironmentProbe:
    """What preflight must learn from a host to name the release's environment."""

    venv_python: str
    wheel_dirs: tuple[str, ...]


def preflight_script(
    root: str,
    *,
    owner: LockOwner,
    release: str,
    need_kb: int,
    shared_files: Iterable[str],
    probe: EnvironmentProbe | None,
    take: bool = True,
) -> str:
    """Take the lock (or, for a dry run, only look at it), then check the host can take this
    release; the lock is released again by the script itself if any check fails."""
    script = Script(root).call("need_root")
    if take:
        script.call("take_lock", owner.token, owner.to_json())
    else:
        script.call("show_lock")
    script.call("check_absent", release).call("check_space", need_kb)
    for path in shared_files:
        script.call("check_shared_file", path)
    if probe is not None:
        script.call("probe_python", probe.venv_python)
        for directory in probe.wheel_dirs:
            script.call("digest_dir", directory)
    return script.call("read_state", REVISIONS_READ).call("read_manifest").text()


def upload_paths(absolute_root: str, release: str) -> tuple[str, str]:
    """Where the SFTP upload puts the archive and its plan (absolute, as SFTP needs)."""
    base = f"{absolute_root.rstrip('/')}/releases/.partial-{release}"
    return base + ".archive", base + ".plan"


def unpack_script(
    root: str,
    *,
    owner: LockOwner,
    release: str,
    sha256: str,
    compression: str,
    plan_sha256: str,
    previous: str | None,
    shared_files: Iterable[str],
    shared_dirs: Iterable[str],
    publish: bool,
) -> str:
    """Unpack the uploaded archive over hard links of ``previous`` (the delta upload), verify
    every file against the manifest, write ``.release.json`` and ``REVISION``, link shared
    paths, and (``publish``) rename it into ``releases/<id>``. A file that does not verify
    fails the script with ``Code.MISMATCH`` naming it; the partial release is then kept for
    a second upload of those files (``repair_script``)."""
    script = _holding(root, owner)
    script.call("begin_release", release)
    script.call("unpack", sha256, compression, plan_sha256, previous or "")
    return _complete(script, shared_files, shared_dirs, publish)


def repair_script(
    root: str,
    *,
    owner: LockOwner,
    release: str,
    sha256: str,
    compression: str,
    shared_files: Iterable[str],
    shared_dirs: Iterable[str],
    publish: bool,
) -> str:
    """Unpack a second archive holding the files that did not verify, and verify again."""
    script = _holding(root, owner)
    script.call("begin_release", release).call("repair", sha256, compression)
    return _complete(script, shared_files, shared_dirs, publish)


def _complete(
    script: Script, shared_files: Iterable[str], shared_dirs: Iterable[str], publish: bool
) -> str:
    script.call("verify_release").call("finish_unpack")
    for kind, paths in (("dir", shared_dirs), ("file", shared_files)):
        for path in paths:
            script.call("link_shared", path, shared_link_target(path), kind)
    if publish:
        script.call("publish")
    return script.text()


def shared_link_target(path: str) -> str:
    """Relative link from ``releases/<id>/<path>`` to ``shared/<path>``: it survives a root
    that is moved or mounted elsewhere."""
    depth = path.count("/") + 2  # <id>/ and releases/
    return "../" * depth + "shared/" + path


@dataclass(frozen=True)
class EnvironmentPlan:
    """The release's environment on one host: ``shared/venvs/<hash>``."""

    hash: str
    lock_file: str
    kind: str  # "uv.lock" or "requirements"
    installer: str  # "uv" or "pip"
    venv_python: str
    install_args: tuple[str, ...]


def environment_script(
    root: str, *, owner: LockOwner, release: str, plan: EnvironmentPlan, track: str
) -> str:
    """Build (or reuse) the release's environment, link it as ``.venv``, publish the release."""
    script = Script(root).call("need_root").call("track", track)
    script.call("hold_lock", owner.token, owner.to_json())
    script.call("begin_release", release)
    script.call(
        "build_env",
        plan.hash,
        plan.lock_file,
        plan.kind,
        plan.installer,
        plan.venv_python,
        *plan.install_args,
    )
    return script.call("publish").text()


def phase_script(root: str, *, owner: LockOwner) -> str:
    """Record the phase in owner.json (and prove the lock is still ours)."""
    return Script(root).call("need_root").call("hold_lock", owner.token, owner.to_json()).text()


def switch_script(root: str, release: str, owner: LockOwner) -> str:
    script = _holding(root, owner)
    return script.call("switch_to", release).text()


def hooks_script(
    root: str,
    directory: str,
    name: str,
    commands: Sequence[str],
    owner: LockOwner | None,
    track: str,
) -> str:
    """``commands`` in ``<root>/<directory>`` with the release's environment (a hook)."""
    script = Script(root).call("need_root").call("track", track)
    if owner is not None:
        script.call("hold_lock", owner.token, owner.to_json())
    return script.call("run_hooks", directory, name, *commands).text()


def restart_script(
    root: str,
    *,
    restart: Sequence[str],
    health: Sequence[str],
    health_timeout: float,
    owner: LockOwner | None,
    track: str,
) -> str:
    """``restart`` in ``current``, then ``health`` until it passes: one command per host."""
    script = Script(root).call("need_root").call("track", track)
    if owner is not None:
        script.call("hold_lock", owner.token, owner.to_json())
    if restart:
        script.call("run_hooks", "current", "restart", *restart)
    if health:
        script.call("health_until", max(1, round(health_timeout)), *health)
    return script.text()


def finish_script(
    root: str,
    *,
    owner: LockOwner,
    revision: Revision,
    remove: Iterable[str],
) -> str:
    """Log the deploy, clean up old releases, unused environments and leftovers, unlock.
    Safe to run twice (a retry after a lost connection): the log line is appended once."""
    script = Script(root).call("need_root")
    script.call("log_revision", revision.to_line())
    for release in remove:
        script.call("remove_release", release)
    script.call("clean_leftovers").call("clean_envs")
    return script.call("release_lock", owner.token).text()


def abort_script(root: str, *, owner: LockOwner | None, discard: str | None) -> str:
    """Undo a deploy that failed before the switch: drop the partial (or complete, never
    switched to) release ``discard`` and release our lock. ``current`` is not touched."""
    script = Script(root)
    if discard:
        # releases/<id> was checked absent under our lock, so it is ours to remove
        script.call("begin_release", discard).call("discard_partial").call(
            "remove_release", discard
        )
    if owner is not None:
        script.call("stop_own_runner", owner.token).call("release_lock", owner.token)
    return script.text()


def switch_back_script(root: str, *, target: str | None) -> str:
    """Put ``current`` back on ``target`` (remove it when there was none before)."""
    script = Script(root)
    if target:
        script.call("switch_to", target)
    else:
        script.call("unlink_current")
    return script.text()


def log_and_unlock_script(root: str, *, revision: Revision | None, owner: LockOwner) -> str:
    """Log ``revision`` (once), clean up leftovers, release our lock."""
    script = Script(root)
    if revision is not None:
        script.call("log_revision", revision.to_line())
    return script.call("clean_leftovers").call("release_lock", owner.token).text()


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
        script.call("release_lock", owner.token)
    return script.text()


def take_over_script(root: str, *, old: LockOwner | None, owner: LockOwner) -> str:
    """Recovery: make the dead owner's lock ours, then stop the runner and the hooks it
    left running."""
    script = Script(root).call("need_root")
    script.call("take_over_lock", old.token if old else "", owner.token, owner.to_json())
    script.call("stop_runner", 10).call("stop_tracked", 5)
    return script.call("read_state", REVISIONS_READ).text()


def datamig_script(
    root: str,
    directory: str,
    python: Sequence[str],
    argv: Sequence[str],
    *,
    owner: LockOwner | None = None,
) -> str:
    """The migration runner (``python`` + ``argv``) inside ``<root>/<directory>``, given
    ``--root`` (absolute) and ``--env-file <root>/shared/.env``. Under a deploy (``owner``),
    the lock must still be ours and the runner's pid is recorded in it."""
    script = Script(root).call("need_root")
    if owner is not None:
        script.call("hold_lock", owner.token, owner.to_json())
    script.call("run_datamig", directory, "yes" if owner else "no", len(python), *python, *argv)
    return script.text()


def untrack_script(root: str, track: str, grace: float = 5) -> str:
    """Stop what a tracked script (hooks, restart, the installer) still runs after the client
    stopped waiting for it."""
    return Script(root).call("need_root").call("untrack", track, max(1, round(grace))).text()


def stage_dry_run_script(root: str, name: str, compression: str) -> str:
    return Script(root).call("need_root").call("stage_dry_run", name, compression).text()


def unstage_dry_run_script(root: str, name: str) -> str:
    return Script(root).call("need_root").call("unstage_dry_run", name).text()


def stop_runner_script(root: str, grace: float) -> str:
    return Script(root).call("need_root").call("stop_runner", max(1, round(grace))).text()


def wait_runner_script(root: str, seconds: float | None) -> str:
    return Script(root).call("need_root").call("wait_runner", round(seconds or 0)).text()
