"""Configuration: the defaults of every ``deploy.*`` / ``datamig.*`` key and the resolved settings.

Layering is invoke's own (collection defaults, ``invoke.yaml``, ``INVOKE_*`` variables,
``invoke -f FILE``, task flags); this module declares the defaults and turns the merged config
into typed, validated ``Settings`` with one ``Target`` per host: it chooses the stage, reads the
hosts from ``deploy.hosts`` or an Ansible inventory, applies per-host values, and narrows the
hosts with ``--hosts`` / ``--limit``. Every value is converted here, not by invoke: invoke casts
an environment string by the type of the default (``bool("false")`` is true), so the collection
is configured with ``None`` defaults (``invoke_defaults``) and the documented defaults below are
applied by ``load_settings``. Every mistake is a ``ConfigError`` (exit 2) naming the key.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .exceptions import ConfigError

DEFAULTS: dict[str, dict[str, Any]] = {
    "deploy": {
        # where releases go: "user@host[:port]", "local", or a mapping of per-host values
        "hosts": None,
        # an Ansible inventory (file, directory or plugin config) whose hosts replace `hosts`
        "inventory": None,
        # a pattern of hosts and roles (Ansible's patterns with an inventory); also --limit
        "limit": None,
        # {NAME: {deploy keys, datamig: {...}}}: a stage is merged over the rest
        "stages": {},
        # the stage to use (also --stage NAME or INVOKE_DEPLOY_STAGE); none: the top level
        "stage": None,
        # the deploy root on every host (./.deploy for a local target)
        "root": None,
        # the git work tree to release (the current directory)
        "repo": None,
        # how many releases cleanup keeps (current and its rollback target are always kept)
        "keep_releases": 5,
        # files under shared/ linked into every release before the switch
        "shared_files": [],
        # directories under shared/ linked into every release before the switch
        "shared_dirs": [],
        # the host, or a role (its first host), that runs the data migrations (the first host)
        "migrate_on": None,
        # the Python that runs deploytools.datamig without an environment (python3; local: this)
        "python": None,
        # "auto": build the release's environment when it holds a lock file; "off": never
        "venv": "auto",
        # the lock file, relative to the release (first of uv.lock, requirements.lock/.txt)
        "requirements": None,
        # "uv" or "pip"; "auto" picks uv when the host has it
        "installer": "auto",
        # extra arguments for the installer
        "install_args": [],
        # the interpreter environments are created from
        "venv_python": "python3",
        # commands run locally in a clean export of the ref before the archive is made
        "build": [],
        # commands run on every host in the new release before the switch
        "before_switch": [],
        # commands run on every host in `current` after migrate (and after an undo or rollback)
        "restart": [],
        # commands run in `current` after restart until they pass or health_timeout ends
        "health": [],
        # one health command: read as health: [health_cmd]
        "health_cmd": None,
        # seconds health may take to pass
        "health_timeout": 30,
        # hosts restarted at a time: a number or a percentage ("25%"); none: all at once
        "restart_batch": None,
        # SSH private key (else ssh-agent and ~/.ssh, as OpenSSH does)
        "identity_file": None,
        # known_hosts file checked for host keys
        "known_hosts": "~/.ssh/known_hosts",
        # trust and record keys of hosts not yet known (a changed key is still refused)
        "accept_new_host_keys": False,
        # seconds for TCP, banner and authentication
        "connect_timeout": 10,
        # seconds between SSH keepalives; 3 unanswered fail the host
        "keepalive": 15,
        # seconds any remote command, installer or transfer (by inactivity) may take
        "command_timeout": 600,
    },
    "datamig": {
        # migrations folder, relative to the release root (absent default: no migrations)
        "path": "migrations",
        # seconds the migrate steps may take (none: no limit)
        "timeout": None,
        # seconds a runner waits for another runner's lock (0: do not wait)
        "lock_timeout": 60,
        # PostgreSQL statement_timeout for ctx.db, in seconds (none: the server's)
        "statement_timeout": None,
        # PostgreSQL lock_timeout for ctx.db, in seconds (none: the server's)
        "pg_lock_timeout": None,
        # revert the migrations a release applied when it is rolled back
        "revert_on_rollback": False,
    },
}

LOCAL = "local"
# keys an entry of deploy.hosts (or a deploy_<key> inventory variable) may set for one host
PER_HOST_KEYS = ("host", "root", "python", "identity_file", "roles", "restart", "health")
# keys a stage may set: every deploy key but the stage machinery itself (plus a datamig mapping)
STAGE_KEYS = tuple(key for key in DEFAULTS["deploy"] if key not in ("stages", "stage"))
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Target:
    """One release host as the deploy sees it: where it is, and its per-host settings."""

    name: str  # as written in deploy.hosts, or the inventory host name; used in every message
    root: str
    python: str | None  # deploy.python if set for this host, else None
    user: str | None = None
    hostname: str | None = None  # None for a local target
    port: int | None = None
    identity_file: str | None = None
    roles: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()  # the host's own value, else deploy.restart
    health: tuple[str, ...] = ()  # the host's own value, else deploy.health

    @property
    def is_local(self) -> bool:
        return self.hostname is None

    @property
    def runner_python(self) -> str:
        """The Python that runs ``deploytools.datamig`` when the release has no environment."""
        if self.python:
            return self.python
        return sys.executable if self.is_local else "python3"


@dataclass(frozen=True)
class Settings:
    """Everything a command needs, validated once."""

    targets: tuple[Target, ...]  # the hosts this command acts on (after --hosts / --limit)
    fleet: tuple[Target, ...]  # every configured host (to name what --limit left out)
    migrate_on: Target  # may be outside targets: check and migrate still run there
    stage: str | None
    repo: Path
    keep_releases: int
    shared_files: tuple[str, ...]
    shared_dirs: tuple[str, ...]
    known_hosts: Path
    accept_new_host_keys: bool
    connect_timeout: float
    keepalive: float
    command_timeout: float
    venv: str  # "auto" | "off"
    requirements: str | None  # None: first of uv.lock, requirements.lock, requirements.txt
    installer: str  # "auto" | "uv" | "pip"
    install_args: tuple[str, ...]
    venv_python: str
    build: tuple[str, ...]
    before_switch: tuple[str, ...]
    health_timeout: float
    restart_batch: int | None  # None (and no percentage): every host at once
    restart_batch_percent: int | None
    migrations_path: str
    migrations_path_explicit: bool  # set in the config: a release without it is exit 2
    datamig_timeout: float | None  # None: no limit
    lock_timeout: float
    statement_timeout: float | None
    pg_lock_timeout: float | None
    revert_on_rollback: bool

    @property
    def limited(self) -> bool:
        """True when --hosts / --limit left some configured hosts out."""
        return set(self.targets) < set(self.fleet)

    @property
    def health_cmd(self) -> str | None:
        """``deploy.health`` of the migration host as one shell command, for callers written
        before health commands became per host; new code reads ``Target.health``."""
        return " && ".join(self.migrate_on.health) or None

    def restart_batches(self, targets: Sequence[Target]) -> list[list[Target]]:
        """``targets`` in restart batches of ``restart_batch`` hosts (or the percentage of
        them, rounded up, at least 1); one batch when neither is set."""
        hosts = list(targets)
        if not hosts:
            return []
        size = len(hosts)
        if self.restart_batch is not None:
            size = self.restart_batch
        elif self.restart_batch_percent is not None:
            size = max(1, math.ceil(len(hosts) * self.restart_batch_percent / 100))
        return [hosts[start : start + size] for start in range(0, len(hosts), size)]


def invoke_defaults() -> dict[str, dict[str, Any]]:
    """What the invoke Collection is configured with: every key, each ``None`` (``{}`` for a
    mapping, which invoke refuses to merge a file's mapping over ``None``).

    Every key must be present for invoke to read its ``INVOKE_*`` variable, and ``None`` makes
    invoke pass the variable's text through unchanged, so that ``load_settings`` converts it
    (``"false"`` is false, ``"soon"`` for a number is exit 2, not a traceback)."""
    return {
        section: {key: {} if isinstance(default, dict) else None for key, default in keys.items()}
        for section, keys in DEFAULTS.items()
    }


def load_settings(
    config: Mapping[str, Any],
    hosts: str | None = None,
    *,
    limit: str | None = None,
    stage: str | None = None,
) -> Settings:
    """Validate the merged invoke config (``c.config``) into Settings.

    ``hosts`` (``--hosts a,b``: names from the fleet), ``limit`` (``--limit PATTERN``, over
    ``deploy.limit``) and ``stage`` (``--stage NAME``, over ``deploy.stage``) are the task
    flags. A ConfigError names the bad key and what to write instead."""
    deploy, datamig = _sections(config)
    stage = stage or _text("deploy.stage", deploy.pop("stage", None))
    stages = deploy.get("stages")
    stage_names = list(stages) if isinstance(stages, dict) and stage is None else []
    deploy, datamig = _with_stage(deploy, datamig, stage)

    inventory = None
    if deploy.get("inventory") is not None:
        from .inventory import read_inventory

        keys = [key for key in PER_HOST_KEYS if key != "host"]
        inventory = read_inventory(_text("deploy.inventory", deploy["inventory"]) or "", keys)
    fleet = _fleet(deploy, inventory, stage_names)
    targets = _select(fleet, hosts, limit or _text("deploy.limit", deploy.get("limit")), inventory)
    batch, percent = _restart_batch(deploy.get("restart_batch"))
    path_value = datamig.get("path")
    return Settings(
        targets=tuple(targets),
        fleet=tuple(fleet),
        migrate_on=_migrate_on(fleet, _text("deploy.migrate_on", deploy.get("migrate_on"))),
        stage=stage,
        repo=_local_path("deploy.repo", deploy.get("repo")).resolve(),
        keep_releases=int(_number("deploy.keep_releases", _get(deploy, "keep_releases"), 1, True)),
        shared_files=_shared_paths("deploy.shared_files", deploy.get("shared_files")),
        shared_dirs=_shared_paths("deploy.shared_dirs", deploy.get("shared_dirs")),
        known_hosts=_local_path("deploy.known_hosts", _get(deploy, "known_hosts")),
        accept_new_host_keys=_boolean(
            "deploy.accept_new_host_keys", _get(deploy, "accept_new_host_keys")
        ),
        connect_timeout=_seconds("deploy.connect_timeout", _get(deploy, "connect_timeout")),
        keepalive=_seconds("deploy.keepalive", _get(deploy, "keepalive")),
        command_timeout=_seconds("deploy.command_timeout", _get(deploy, "command_timeout")),
        venv=_venv(_get(deploy, "venv")),
        requirements=_release_path("deploy.requirements", deploy.get("requirements")),
        installer=_choice("deploy.installer", _get(deploy, "installer"), ("auto", "uv", "pip")),
        install_args=_arguments("deploy.install_args", deploy.get("install_args")),
        venv_python=_text("deploy.venv_python", _get(deploy, "venv_python")) or "python3",
        build=_commands("deploy.build", deploy.get("build")),
        before_switch=_commands("deploy.before_switch", deploy.get("before_switch")),
        health_timeout=_seconds("deploy.health_timeout", _get(deploy, "health_timeout")),
        restart_batch=batch,
        restart_batch_percent=percent,
        migrations_path=_release_path("datamig.path", path_value) or DEFAULTS["datamig"]["path"],
        migrations_path_explicit=path_value is not None,
        datamig_timeout=_optional_seconds("datamig.timeout", datamig.get("timeout")),
        lock_timeout=_seconds(
            "datamig.lock_timeout", _get(datamig, "lock_timeout", "datamig"), zero_ok=True
        ),
        statement_timeout=_optional_seconds(
            "datamig.statement_timeout", datamig.get("statement_timeout")
        ),
        pg_lock_timeout=_optional_seconds(
            "datamig.pg_lock_timeout", datamig.get("pg_lock_timeout")
        ),
        revert_on_rollback=_boolean(
            "datamig.revert_on_rollback", _get(datamig, "revert_on_rollback", "datamig")
        ),
    )


def migrations_folder(config: Mapping[str, Any], *, stage: str | None = None) -> Path:
    """``<deploy.repo>/<datamig.path>`` on this machine, for ``invoke datamig.new``: the same
    checks as ``load_settings`` but no hosts needed, since nothing leaves this machine."""
    deploy, datamig = _sections(config)
    stage = stage or _text("deploy.stage", deploy.pop("stage", None))
    deploy, datamig = _with_stage(deploy, datamig, stage)
    repo = _local_path("deploy.repo", deploy.get("repo")).resolve()
    return repo / (
        _release_path("datamig.path", datamig.get("path")) or DEFAULTS["datamig"]["path"]
    )


def with_targets(settings: Settings, targets: tuple[Target, ...]) -> Settings:
    """The same settings on other targets (the first of them migrates if the migration host
    is not among them)."""
    migrate_on = settings.migrate_on if settings.migrate_on in targets else targets[0]
    return replace(settings, targets=targets, migrate_on=migrate_on)


# -- sections, unknown keys, stages --------------------------------------------------------------


def _sections(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``deploy`` and ``datamig`` mappings as plain dicts without unset (None) values,
    unknown keys refused and ``health_cmd`` read as ``health``."""
    environment = _environment_text(config)
    sections = []
    for section in ("deploy", "datamig"):
        value = _plain(config.get(section))
        if value is None:
            value = {}
        if not isinstance(value, dict):
            example = next(iter(DEFAULTS[section]))
            raise ConfigError(
                f"{section}: must be a mapping of keys (e.g. {example}: ...), "
                f"got {type(value).__name__} {value!r}"
            )
        value.update(environment.get(section, {}))
        _refuse_unknown(section, value, DEFAULTS[section])
        sections.append({key: item for key, item in value.items() if item is not None})
    deploy, datamig = sections
    return _health_alias("deploy", deploy), datamig


def _environment_text(config: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The raw text of ``INVOKE_*`` variables that invoke cast by a value's type.

    When a file sets a key (``accept_new_host_keys: false``), invoke casts the variable by that
    value's type and ``INVOKE_DEPLOY_ACCEPT_NEW_HOST_KEYS=false`` becomes true. This takes the
    text back from ``os.environ`` for every value of invoke's environment layer that is not
    text, unless a later layer (``-f FILE``, overrides) set the key."""
    layer = getattr(config, "_env", None)
    prefix = getattr(config, "_env_prefix", None)
    if not isinstance(layer, dict) or not isinstance(prefix, str):
        return {}
    later = [getattr(config, name, None) or {} for name in ("_runtime", "_overrides")]
    texts: dict[str, dict[str, str]] = {}
    for section in DEFAULTS:
        for key, value in (layer.get(section) or {}).items():
            if isinstance(value, str | dict) or any(
                key in (lay.get(section) or {}) for lay in later
            ):
                continue
            variable = f"{prefix}{section}_{key}".upper()
            if variable in os.environ:
                texts.setdefault(section, {})[key] = os.environ[variable]
    return texts


def _refuse_unknown(where: str, values: Mapping[str, Any], known: Sequence[str]) -> None:
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = (
                f"did you mean {where}.{close[0]}?" if close else "known keys: " + ", ".join(known)
            )
            # a key of the other section (datamig's lock_timeout under deploy:) is no typo
            home = [s for s, keys in DEFAULTS.items() if key in keys and not where.endswith(s)]
            if home:
                hint = f"did you mean {home[0]}.{key}? ({key} belongs under {home[0]}:)"
            raise ConfigError(f"{where}.{key} is not a known key; {hint}")


def _health_alias(where: str, values: dict[str, Any]) -> dict[str, Any]:
    """``health_cmd: X`` is ``health: [X]``; setting both is a mistake."""
    command = values.pop("health_cmd", None)
    if command is None:
        return values
    if values.get("health"):
        raise ConfigError(
            f"{where} sets both health and health_cmd; keep one (health_cmd: X is health: [X])"
        )
    return {**values, "health": command}


def _with_stage(
    deploy: dict[str, Any], datamig: dict[str, Any], stage: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge the chosen stage's keys over the top level (every stage is checked)."""
    stages = deploy.pop("stages", None) or {}
    if not isinstance(stages, dict):
        raise ConfigError(f"deploy.stages must be a mapping of stage names to keys, got {stages!r}")
    checked = {}
    for name, body in stages.items():
        where = f"deploy.stages.{name}"
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise ConfigError(f"{where} must be a mapping of deploy keys, got {body!r}")
        body = dict(body)
        stage_datamig = body.pop("datamig", None)
        stage_datamig = {} if stage_datamig is None else stage_datamig
        if not isinstance(stage_datamig, dict):
            raise ConfigError(f"{where}.datamig must be a mapping, got {stage_datamig!r}")
        _refuse_unknown(where, body, STAGE_KEYS)
        _refuse_unknown(f"{where}.datamig", stage_datamig, tuple(DEFAULTS["datamig"]))
        body = {key: value for key, value in body.items() if value is not None}
        stage_datamig = {key: value for key, value in stage_datamig.items() if value is not None}
        checked[str(name)] = (_health_alias(where, body), stage_datamig)
    if stage is None:
        return deploy, datamig
    if stage not in checked:
        known = ", ".join(checked) if checked else "none are defined under deploy.stages"
        raise ConfigError(f"unknown stage {stage!r}; stages: {known}")
    body, stage_datamig = checked[stage]
    if "hosts" in body or "inventory" in body:
        # a stage's own hosts (or inventory) replace both of the top level's
        deploy = {k: v for k, v in deploy.items() if k not in ("hosts", "inventory")}
    return {**deploy, **body}, {**datamig, **stage_datamig}


# -- hosts --------------------------------------------------------------------------------------


def _fleet(deploy: dict[str, Any], inventory: Any, stage_names: list[str]) -> list[Target]:
    """Every configured host, in the order written (or in Ansible's order)."""
    if inventory is not None:
        if "hosts" in deploy:
            raise ConfigError("set deploy.hosts or deploy.inventory, not both")
        return [_inventory_target(host, deploy) for host in inventory.hosts]
    if "hosts" not in deploy:
        hint = f", or choose a stage with --stage ({', '.join(stage_names)})" if stage_names else ""
        raise ConfigError(
            "set deploy.hosts (e.g. [deploy@web1.example.com], or [local] for a directory on "
            f"this machine) or deploy.inventory (an Ansible inventory){hint}"
        )
    entries = deploy["hosts"]
    if not isinstance(entries, list):
        raise ConfigError(
            f"deploy.hosts must be a list, got {entries!r} (an INVOKE_* variable cannot set a "
            "list: write it in invoke.yaml or a file given with invoke -f FILE)"
        )
    if not entries:
        raise ConfigError("deploy.hosts is empty: name at least one host (or local)")
    targets: list[Target] = []
    for entry in entries:
        target = _entry_target(entry, deploy)
        if any(t.name == target.name for t in targets):
            raise ConfigError(f"deploy.hosts lists {target.name!r} twice")
        targets.append(target)
    return targets


def _entry_target(entry: Any, deploy: dict[str, Any]) -> Target:
    """A ``deploy.hosts`` entry: ``user@host[:port]``, ``local``, or a mapping."""
    if isinstance(entry, str):
        entry = {"host": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("host"), str):
        raise ConfigError(
            f"deploy.hosts entry {entry!r} must be 'user@host[:port]', 'local', "
            "or a mapping with a 'host' key"
        )
    name = entry["host"]
    _refuse_unknown(f"deploy.hosts[{name}]", entry, PER_HOST_KEYS)
    values = {key: value for key, value in entry.items() if key != "host" and value is not None}
    if name == LOCAL:
        return _target(name, values, deploy, where=f"host {name}")
    user, hostname, port = _parse_spec(name)
    return _target(
        name, values, deploy, where=f"host {name}", user=user, hostname=hostname, port=port
    )


def _parse_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``user@host[:port]`` (an IPv6 address in brackets) → (user, host, port)."""
    user, _, rest = spec.rpartition("@")
    port: str | None = None
    if rest.startswith("["):  # [2001:db8::1]:22
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            host = ""
        port = tail[1:] if tail else None
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host = rest
    bad_host = not host or any(c.isspace() or c in "@[]" for c in host)
    bad_host = bad_host or (":" in host and not rest.startswith("["))
    bad_user = any(c.isspace() or c == "@" for c in user) or spec.startswith("@")
    bad_port = port is not None and not (port.isdigit() and 0 < int(port) < 65536)
    if bad_host or bad_user or bad_port:
        raise ConfigError(f"deploy.hosts: {spec!r} is not 'user@host[:port]' or 'local'")
    return user or None, host, int(port) if port else None


def _inventory_target(host: Any, deploy: dict[str, Any]) -> Target:
    """An inventory host: its ansible_* connection variables and deploy_<key> values."""
    values = dict(host.values)
    if host.identity_file is not None:
        values.setdefault("identity_file", host.identity_file)
    values["roles"] = [
        *host.groups,
        *_names(f"deploy_roles (host {host.name})", values.get("roles")),
    ]
    return _target(
        host.name,
        values,
        deploy,
        where=f"inventory host {host.name}",
        user=host.user,
        hostname=None if host.local else host.address,
        port=host.port,
    )


def _target(
    name: str,
    values: dict[str, Any],
    deploy: dict[str, Any],
    *,
    where: str,
    user: str | None = None,
    hostname: str | None = None,
    port: int | None = None,
) -> Target:
    """One host's Target: its own values over the deploy-wide ones."""

    def pick(key: str, convert: Any) -> Any:
        if values.get(key) is not None:
            return convert(f"{key} of {where}", values[key])
        return convert(f"deploy.{key}", deploy.get(key))

    root = values.get("root", deploy.get("root"))
    if root is None and hostname is None:
        root = "./.deploy"
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(
            f"{where}: set deploy.root (the deploy root on the host), for every host or for "
            "this one (a 'root' in its deploy.hosts entry, or a deploy_root inventory variable)"
        )
    if "\n" in root or "\0" in root:
        raise ConfigError(f"{where}: deploy.root must not contain newlines")
    if hostname is None:
        root = str(Path(root).expanduser().resolve())
    return Target(
        name=name,
        root=root,
        python=pick("python", _text),
        user=user,
        hostname=hostname,
        port=port,
        identity_file=pick("identity_file", _text),
        roles=_names(f"roles of {where}", values.get("roles")),
        restart=pick("restart", _commands),
        health=pick("health", _commands),
    )


def _select(
    fleet: list[Target], hosts: str | None, limit: str | None, inventory: Any
) -> list[Target]:
    """The hosts a command acts on: ``--hosts`` names, then the ``--limit`` pattern."""
    chosen = fleet
    known = ", ".join(t.name for t in fleet)
    if hosts is not None:
        names = {name.strip() for name in hosts.split(",") if name.strip()}
        if not names:
            raise ConfigError(f"--hosts needs at least one host name (hosts: {known})")
        unknown = sorted(names - {t.name for t in fleet})
        if unknown:
            raise ConfigError(
                f"--hosts: {', '.join(unknown)} is not a configured host; hosts: {known}"
            )
        chosen = [t for t in fleet if t.name in names]
    if limit:
        if inventory is not None:
            matched = set(inventory.match(limit))
        else:
            from .inventory import match_pattern

            matched = set(match_pattern(limit, [(t.name, t.roles) for t in fleet]))
        chosen = [t for t in chosen if t.name in matched]
        if not chosen:
            after = " after --hosts" if hosts is not None else ""
            raise ConfigError(f"limit {limit!r} leaves no host{after}; hosts: {known}")
    return chosen


def _migrate_on(fleet: list[Target], name: str | None) -> Target:
    """``deploy.migrate_on``: a host name, or a role (its first host); the first host."""
    if name is None:
        return fleet[0]
    for target in fleet:
        if target.name == name:
            return target
    for target in fleet:
        if name in target.roles:
            return target
    roles = sorted({role for t in fleet for role in t.roles})
    raise ConfigError(
        f"deploy.migrate_on {name!r} is neither a host nor a role; hosts: "
        + ", ".join(t.name for t in fleet)
        + (f"; roles: {', '.join(roles)}" if roles else "")
    )


# -- values -------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """invoke's DataProxy → plain dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain(value[key]) for key in value}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _get(values: dict[str, Any], key: str, section: str = "deploy") -> Any:
    """The set value, else the documented default."""
    return values[key] if key in values else DEFAULTS[section][key]


def _text(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _boolean(key: str, value: Any) -> bool:
    """true/false/yes/no/on/off/1/0, in any case; anything else is a mistake."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{key} must be true or false (or yes/no, on/off, 1/0), got {value!r}")


def _number(key: str, value: Any, minimum: float, whole: bool = False) -> float:
    """A number ≥ ``minimum`` (from YAML or an environment string)."""
    kind = "a whole number" if whole else "a number"
    number = _parse_number(key, value, kind)
    if (whole and not number.is_integer()) or number < minimum:
        raise ConfigError(f"{key} must be {kind}, at least {minimum:g}, got {value!r}")
    return number


def _seconds(key: str, value: Any, zero_ok: bool = False) -> float:
    """Seconds > 0 (or ≥ 0 where 0 means 0)."""
    number = _parse_number(key, value, "a number of seconds")
    if number < 0 or (number == 0 and not zero_ok):
        bound = "0 or more" if zero_ok else "greater than 0"
        raise ConfigError(f"{key} must be a number of seconds, {bound}, got {value!r}")
    return number


def _optional_seconds(key: str, value: Any) -> float | None:
    """Seconds > 0, or none (no limit)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        return None
    number = _parse_number(key, value, "a number of seconds or none")
    if number <= 0:
        raise ConfigError(
            f"{key} must be a number of seconds greater than 0, or none; got {value!r}"
        )
    return number


def _parse_number(key: str, value: Any, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{key} must be {kind}, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    return number


def _restart_batch(value: Any) -> tuple[int | None, int | None]:
    """``deploy.restart_batch``: (hosts, None), (None, percent), or (None, None) for all."""
    key = "deploy.restart_batch"
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None, None
    if isinstance(value, str) and value.strip().endswith("%"):
        text = value.strip()[:-1]
        if not text.strip().isdigit() or not 1 <= int(text) <= 100:
            raise ConfigError(f"{key} must be a percentage from 1% to 100%, got {value!r}")
        return None, int(text)
    return int(_number(key, value, 1, whole=True)), None


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _venv(value: Any) -> str:
    # YAML reads an unquoted `off` as false (and `on` as true)
    if isinstance(value, bool):
        return "auto" if value else "off"
    return _choice("deploy.venv", value, ("auto", "off"))


def _commands(key: str, value: Any) -> tuple[str, ...]:
    """A list of shell commands; a single string is a list of one."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value):
        raise ConfigError(f"{key} must be a list of commands (non-empty strings), got {value!r}")
    return tuple(value)


def _arguments(key: str, value: Any) -> tuple[str, ...]:
    """A list of arguments (a string would be ambiguous: one argument, or several?)."""
    if value is None:
        return ()
    if not isinstance(value, list) or any(
        isinstance(item, bool) or not isinstance(item, str | int | float) for item in value
    ):
        raise ConfigError(
            f"{key} must be a list of arguments (e.g. [--find-links, /srv/wheels]), got {value!r}"
        )
    return tuple(str(item) for item in value)


def _names(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(n, str) and n.strip() for n in value):
        raise ConfigError(f"{key} must be a list of names, got {value!r}")
    return tuple(dict.fromkeys(value))


def _relative(key: str, item: Any, inside: str) -> str:
    parts = Path(str(item)).parts if isinstance(item, str) else ()
    if not parts or Path(item).is_absolute() or ".." in parts or "\n" in item:
        raise ConfigError(f"{key}: {item!r} must be a relative path inside {inside} without '..'")
    return str(Path(*parts))


def _shared_paths(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{key} must be a list of paths under shared/, got {value!r}")
    return tuple(_relative(key, item, "shared/") for item in value)


def _release_path(key: str, value: Any) -> str | None:
    return None if value is None else _relative(key, value, "the release")


def _local_path(key: str, value: Any) -> Path:
    """A path on this machine (``~`` expanded; relative to the current directory)."""
    return Path(_text(key, value) or ".").expanduser().absolute()
