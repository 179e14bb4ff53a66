"""Where hosts come from besides ``deploy.hosts``: an Ansible inventory, and host patterns.

An inventory (``deploy.inventory``: a file, a directory or a plugin config) is read with
ansible-core's own API, so INI, YAML, ``host_vars/`` / ``group_vars/``, children groups and
inventory plugins behave exactly as they do for ``ansible-playbook``. ansible-core is an
optional extra, imported only when an inventory is configured. Each host's variables are merged
by Ansible (host over group over ``all``) and templated as Ansible would; ``config`` turns the
result into Targets. ``--limit`` takes Ansible's patterns with an inventory, and the same kind of
pattern (names and roles joined by ``,`` or ``:``, ``&`` to intersect, ``!`` to exclude) without.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import ConfigError

INSTALL_HINT = "install the ansible extra: pip install 'deploytools[ansible]'"
# Ansible's own groups, not roles of a host
_IMPLICIT_GROUPS = ("all", "ungrouped")


@dataclass(frozen=True)
class InventoryHost:
    """One inventory host with its connection variables and its ``deploy_<key>`` values."""

    name: str  # the inventory host name
    address: str  # ansible_host, else the name
    port: int | None  # ansible_port
    user: str | None  # ansible_user
    identity_file: str | None  # ansible_ssh_private_key_file
    local: bool  # ansible_connection: local (a directory on this machine)
    groups: tuple[str, ...]  # its groups but all/ungrouped: the host's roles
    values: dict[str, Any] = field(default_factory=dict)  # deploy_<key> → value, by key


class Inventory:
    """The hosts of an inventory, in Ansible's order (``ansible all --list-hosts``), and
    Ansible's pattern matching on them."""

    def __init__(self, source: str, manager: Any, hosts: list[InventoryHost]) -> None:
        self.source = source
        self.hosts = hosts
        self._manager = manager

    def match(self, pattern: str) -> list[str]:
        """The host names ``--limit PATTERN`` keeps, as ``ansible-playbook --limit`` would.

        Ansible only warns about a part of the pattern that matches nothing; here it is a
        mistake, since a mistyped ``!db1`` would otherwise deploy to db1."""
        from ansible.inventory.manager import split_host_pattern

        for term in split_host_pattern(pattern):
            bare = term.lstrip("!&")
            if bare and not bare.startswith("@") and not self._manager.get_hosts(bare):
                groups = sorted(set(self._manager.groups) - set(_IMPLICIT_GROUPS))
                raise ConfigError(
                    f"limit {pattern!r}: {bare!r} matches no host or group of {self.source}; "
                    f"groups: {', '.join(groups)}"
                )
        self._manager.subset(pattern)
        try:
            return [host.name for host in self._manager.get_hosts()]
        finally:
            self._manager.subset(None)


def read_inventory(source: str, keys: Sequence[str]) -> Inventory:
    """Read ``source`` with ansible-core; ``keys`` are the ``deploy_<key>`` variables to take
    (templated only when present, so playbook-only variables never need to resolve)."""
    try:
        from ansible.errors import AnsibleError
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.template import Templar
        from ansible.vars.manager import VariableManager
    except ImportError:
        raise ConfigError(
            f"deploy.inventory {source!r} needs ansible-core: {INSTALL_HINT}"
        ) from None

    # a comma in the source is Ansible's inline host list ("web1,web2,")
    if "," not in source and not Path(source).expanduser().exists():
        raise ConfigError(f"deploy.inventory: {source} does not exist (a file or a directory)")
    loader = DataLoader()
    try:
        manager = InventoryManager(loader=loader, sources=[str(Path(source).expanduser())])
        variables = VariableManager(loader=loader, inventory=manager)
        hosts = []
        for host in manager.get_hosts():
            merged = variables.get_vars(host=host, include_hostvars=False)
            templar = Templar(loader=loader, variables=merged)
            hosts.append(_host(host, _Vars(host.name, merged, templar), keys))
    except AnsibleError as error:
        raise ConfigError(f"deploy.inventory {source}: {error}") from None
    if not hosts:
        raise ConfigError(
            f"deploy.inventory {source} has no hosts (if Ansible warned above that it could not "
            "parse it, fix that first)"
        )
    return Inventory(source, manager, hosts)


class _Vars:
    """One host's merged variables, templated on reading, as plain Python values."""

    def __init__(self, host: str, merged: dict[str, Any], templar: Any) -> None:
        self.host, self._merged, self._templar = host, merged, templar

    def get(self, *names: str) -> Any:
        """The first of ``names`` that is set (later names are Ansible's older spellings)."""
        from ansible.errors import AnsibleError

        for name in names:
            if self._merged.get(name) is not None:
                try:
                    return _plain(self._templar.template(self._merged[name]))
                except AnsibleError as error:
                    raise ConfigError(f"inventory host {self.host}: {name}: {error}") from None
        return None


def _host(host: Any, variables: _Vars, keys: Sequence[str]) -> InventoryHost:
    port = variables.get("ansible_port", "ansible_ssh_port")
    try:
        port = None if port is None else int(port)
    except (TypeError, ValueError):
        raise ConfigError(
            f"inventory host {host.name}: ansible_port {port!r} is not a number"
        ) from None
    user = variables.get("ansible_user", "ansible_ssh_user")
    key_file = variables.get("ansible_ssh_private_key_file")
    return InventoryHost(
        name=host.name,
        address=str(variables.get("ansible_host", "ansible_ssh_host") or host.name),
        port=port,
        user=None if user is None else str(user),
        identity_file=None if key_file is None else str(key_file),
        local=variables.get("ansible_connection") == "local",
        groups=tuple(g.name for g in host.get_groups() if g.name not in _IMPLICIT_GROUPS),
        values={
            key: value for key in keys if (value := variables.get(f"deploy_{key}")) is not None
        },
    )


def _plain(value: Any) -> Any:
    """Ansible's tagged strings, lists and dicts → plain Python values."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


# -- patterns without an inventory ---------------------------------------------------------------


def match_pattern(pattern: str, hosts: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """The names (in the given order) that an Ansible-style ``pattern`` keeps among ``hosts``
    (name, roles): host names and roles joined by ``,`` or ``:``; ``&x`` keeps only hosts also
    in x, ``!x`` leaves x out; ``all`` and ``*`` globs work; a pattern of only ``&``/``!``
    parts starts from every host, as in Ansible. A part that matches nothing is a mistake."""
    names = [name for name, _ in hosts]
    chosen: set[str] = set()
    required: list[set[str]] = []
    excluded: set[str] = set()
    has_regular = False
    for term in _terms(pattern, hosts):
        operator, bare = (term[0], term[1:]) if term[0] in "!&" else ("", term)
        matched = {name for name, roles in hosts if _matches(bare, name, roles)}
        if not matched:
            roles = sorted({role for _, rs in hosts for role in rs})
            raise ConfigError(
                f"limit {pattern!r}: {bare!r} matches no host or role; hosts: {', '.join(names)}"
                + (f"; roles: {', '.join(roles)}" if roles else "")
            )
        if operator == "!":
            excluded |= matched
        elif operator == "&":
            required.append(matched)
        else:
            has_regular = True
            chosen |= matched
    if not has_regular:
        chosen = set(names)
    for group in required:
        chosen &= group
    return [name for name in names if name in chosen and name not in excluded]


def _terms(pattern: str, hosts: Sequence[tuple[str, Sequence[str]]]) -> Iterator[str]:
    """Split on ``,``, then on ``:`` unless the part is a whole name (``user@host:22``)."""
    whole = {name for name, _ in hosts} | {role for _, roles in hosts for role in roles}
    for piece in pattern.split(","):
        piece = piece.strip()
        if piece.lstrip("!&") in whole:
            yield piece
        else:
            yield from (part.strip() for part in piece.split(":") if part.strip())


def _matches(bare: str, name: str, roles: Sequence[str]) -> bool:
    if bare in ("all", "*") or bare == name or bare in roles:
        return True
    if "*" in bare or "?" in bare:
        return fnmatch.fnmatchcase(name, bare) or any(fnmatch.fnmatchcase(r, bare) for r in roles)
    return False
