"""Configuration: the defaults of every ``deploy.*`` / ``datamig.*`` key and the resolved settings.

Layering is invoke's own (collection defaults below, ``invoke.yaml``, ``INVOKE_*`` variables,
``invoke -f FILE``, task flags); this module only declares the defaults and turns the merged
config into typed, validated ``Settings`` with one ``Target`` per host. No I/O beyond resolving
local paths.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .exceptions import ConfigError

DEFAULTS: dict[str, dict[str, Any]] = {
    "deploy": {
        # where releases go: "user@host[:port]", "local", or {host: ..., root: ..., python: ...}
        "hosts": ["local"],
        # the deploy root on every host (default ./.deploy for a local target)
        "root": None,
        # the git work tree to release (default: the one containing the current directory)
        "repo": None,
        # how many releases cleanup keeps (current and its rollback target are always kept)
        "keep_releases": 5,
        # paths under shared/ linked into every release before the switch
        "shared_files": [],
        "shared_dirs": [],
        # the host that runs the data migrations (default: the first host)
        "migrate_on": None,
        # the Python on the hosts that runs deploytools.datamig (python3; local: this Python)
        "python": None,
        # run in `current` on every host after migrate; non-zero exit rolls the deploy back
        "health_cmd": None,
        # SSH private key (else ssh-agent and ~/.ssh, as OpenSSH does)
        "identity_file": None,
        # known_hosts file checked for host keys
        "known_hosts": "~/.ssh/known_hosts",
        # trust and record keys of hosts not yet known (a changed key is still refused)
        "accept_new_host_keys": False,
        # seconds to wait for an SSH connection
        "connect_timeout": 10,
    },
    "datamig": {
        # migrations folder, relative to the release root
        "path": "migrations",
        # revert the migrations a release applied when it is rolled back
        "revert_on_rollback": False,
        # seconds the runner waits for another runner's lock
        "lock_timeout": 60,
    },
}

LOCAL = "local"
_SSH_SPEC = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]\s]+\]|[^:@\s\[\]]+)(?::(?P<port>\d+))?$"
)
_PER_HOST_KEYS = {"host", "root", "python", "identity_file"}


@dataclass(frozen=True)
class Target:
    """One release host as the deploy sees it: where it is, and its per-host settings."""

    name: str  # as written in deploy.hosts; used in every message
    root: str
    python: str
    user: str | None = None
    hostname: str | None = None  # None for a local target
    port: int | None = None
    identity_file: str | None = None

    @property
    def is_local(self) -> bool:
        return self.hostname is None


@dataclass(frozen=True)
class Settings:
    """Everything a command needs, validated once."""

    targets: tuple[Target, ...]
    migrate_on: Target
    repo: Path
    keep_releases: int
    shared_files: tuple[str, ...]
    shared_dirs: tuple[str, ...]
    health_cmd: str | None
    known_hosts: Path
    accept_new_host_keys: bool
    connect_timeout: float
    migrations_path: str
    revert_on_rollback: bool
    lock_timeout: float


def _plain(value: Any) -> Any:
    """invoke's DataProxy → plain dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain(value[key]) for key in value}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _relative_path_list(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list):
        raise ConfigError(f"{key} must be a list of paths under shared/, got {value!r}")
    paths = []
    for item in value:
        parts = Path(str(item)).parts
        if not parts or Path(str(item)).is_absolute() or ".." in parts:
            raise ConfigError(
                f"{key}: {item!r} must be a relative path inside shared/ without '..'"
            )
        paths.append(str(Path(*parts)))
    return tuple(paths)


def parse_host(spec: str, root: str, python: str, identity_file: str | None) -> Target:
    """Turn ``user@host[:port]`` or ``local`` into a Target (validating the spec)."""
    if spec == LOCAL:
        return Target(name=spec, root=root, python=python)
    match = _SSH_SPEC.match(spec)
    if not match:
        raise ConfigError(f"deploy.hosts: {spec!r} is not 'user@host[:port]' or 'local'")
    port = match["port"]
    return Target(
        name=spec,
        root=root,
        python=python,
        user=match["user"],
        hostname=match["host"].strip("[]"),
        port=int(port) if port else None,
        identity_file=identity_file,
    )


def _check_root(name: str, root: Any) -> str:
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(f"host {name}: set deploy.root (the deploy root on the host)")
    if "\n" in root or "\0" in root:
        raise ConfigError(f"host {name}: deploy.root must not contain newlines")
    return root


def _targets(deploy: dict[str, Any], hosts_override: str | None) -> list[Target]:
    entries = deploy.get("hosts") or [LOCAL]
    if not isinstance(entries, list):
        raise ConfigError("deploy.hosts must be a list (INVOKE_* variables cannot set lists)")
    by_name: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if isinstance(entry, str):
            entry = {"host": entry}
        if not isinstance(entry, dict) or "host" not in entry:
            raise ConfigError(f"deploy.hosts entry {entry!r} needs a 'host' key")
        unknown = set(entry) - _PER_HOST_KEYS
        if unknown:
            raise ConfigError(
                f"deploy.hosts entry {entry['host']!r}: unknown keys {sorted(unknown)}; "
                f"per-host keys are {sorted(_PER_HOST_KEYS)}"
            )
        if entry["host"] in by_name:
            raise ConfigError(f"deploy.hosts lists {entry['host']!r} twice")
        by_name[str(entry["host"])] = entry
    if hosts_override:
        names = [name.strip() for name in hosts_override.split(",") if name.strip()]
        if not names:
            raise ConfigError("--hosts needs at least one host")
        chosen = [by_name.get(name, {"host": name}) for name in names]
    else:
        chosen = list(by_name.values())

    targets = []
    for entry in chosen:
        name = str(entry["host"])
        is_local = name == LOCAL
        root = entry.get("root", deploy.get("root"))
        if root is None and is_local:
            root = "./.deploy"
        root = _check_root(name, root)
        if is_local:
            root = str(Path(root).expanduser().resolve())
        python = entry.get("python", deploy.get("python")) or (
            sys.executable if is_local else "python3"
        )
        identity = entry.get("identity_file", deploy.get("identity_file"))
        targets.append(parse_host(name, root, str(python), identity))
    return targets


def load_settings(config: Mapping[str, Any], hosts_override: str | None = None) -> Settings:
    """Validate the merged invoke config (``c.config``); a ConfigError names the bad key."""
    deploy = {**DEFAULTS["deploy"], **_plain(config.get("deploy") or {})}
    datamig = {**DEFAULTS["datamig"], **_plain(config.get("datamig") or {})}
    targets = _targets(deploy, hosts_override)

    migrate_on = targets[0]
    if deploy.get("migrate_on"):
        matches = [t for t in targets if t.name == deploy["migrate_on"]]
        if not matches:
            raise ConfigError(
                f"deploy.migrate_on {deploy['migrate_on']!r} is not one of the hosts: "
                + ", ".join(t.name for t in targets)
            )
        migrate_on = matches[0]

    try:
        keep = int(deploy["keep_releases"])
    except (TypeError, ValueError):
        raise ConfigError(
            f"deploy.keep_releases must be a number, got {deploy['keep_releases']!r}"
        ) from None
    if keep < 1:
        raise ConfigError("deploy.keep_releases must be at least 1")

    repo = deploy.get("repo")
    return Settings(
        targets=tuple(targets),
        migrate_on=migrate_on,
        repo=Path(repo).expanduser().resolve() if repo else Path.cwd(),
        keep_releases=keep,
        shared_files=_relative_path_list("deploy.shared_files", deploy.get("shared_files")),
        shared_dirs=_relative_path_list("deploy.shared_dirs", deploy.get("shared_dirs")),
        health_cmd=deploy.get("health_cmd") or None,
        known_hosts=Path(str(deploy.get("known_hosts") or "~/.ssh/known_hosts")).expanduser(),
        accept_new_host_keys=_boolean(
            "deploy.accept_new_host_keys", deploy["accept_new_host_keys"]
        ),
        connect_timeout=float(deploy.get("connect_timeout") or 10),
        migrations_path=str(datamig.get("path") or "migrations"),
        revert_on_rollback=_boolean("datamig.revert_on_rollback", datamig["revert_on_rollback"]),
        lock_timeout=float(datamig.get("lock_timeout") or 60),
    )


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
        "",
    }:
        return value.lower() in {"1", "true", "yes", "on"}
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def with_targets(settings: Settings, targets: tuple[Target, ...]) -> Settings:
    """The same settings on other targets (the first of them migrates if the migration host
    is not among them)."""
    migrate_on = settings.migrate_on if settings.migrate_on in targets else targets[0]
    return replace(settings, targets=targets, migrate_on=migrate_on)
