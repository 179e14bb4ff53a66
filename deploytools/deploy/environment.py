"""The release's Python environment (DESIGN §8): one virtualenv per lock file hash.

``shared/venvs/<hash>`` is built in place (virtualenvs carry absolute paths and cannot be
moved) and is complete only once its ``.complete`` marker exists; ``releases/<id>/.venv``
links to it. The hash covers everything that makes two environments differ: the lock file's
bytes, the host's ``venv_python`` version, the installer, ``install_args`` and the files of any
wheel directory those name. A deploy whose lock file did not change runs no installer.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence

from ..config import Settings
from ..exceptions import HostError, UsageError
from ..hosts.group import checked
from ..layout import EnvironmentPlan, environment_script, parse_output
from ..lock import LockOwner
from ..output import Reporter
from .build import Release
from .hooks import run_tracked
from .state import HostProgress, Step

_WHEEL_DIR_FLAGS = ("--find-links", "-f")


def wheel_dirs(install_args: Sequence[str], *, inside_release: bool = False) -> tuple[str, ...]:
    """Directories named by ``--find-links DIR`` / ``-f DIR`` / ``--find-links=DIR``: the
    absolute ones (on the host, digested in preflight), or with ``inside_release`` the
    relative ones (the installer runs in the release: their files are in its manifest)."""
    found: list[str] = []
    args = list(install_args)
    for index, arg in enumerate(args):
        value = None
        if arg in _WHEEL_DIR_FLAGS and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--find-links="):
            value = arg.split("=", 1)[1]
        if value and "://" not in value and value.startswith("/") != inside_release:
            found.append(value.rstrip("/"))
    return tuple(found)


def _release_wheels(release: Release, install_args: Sequence[str]) -> dict[str, str]:
    """The sha256 of every file under the release's own wheel directories."""
    prefixes = [d.removeprefix("./") + "/" for d in wheel_dirs(install_args, inside_release=True)]
    return {
        path: entry.sha256
        for path, entry in sorted(release.entries.items())
        if any(path.startswith(prefix) for prefix in prefixes)
    }


def plan(host: HostProgress, settings: Settings, release: Release) -> EnvironmentPlan:
    """Which environment this host needs: installer chosen, hash computed."""
    assert release.lock_file is not None and host.state is not None
    state = host.state
    lock = release.lock_file
    installer = settings.installer
    if installer == "auto":
        installer = "uv" if state.uv else "pip"
    if (lock.kind == "uv.lock" or installer == "uv") and not state.uv:
        needs = "uv.lock" if lock.kind == "uv.lock" else "deploy.installer: uv"
        raise UsageError(
            f"{host.name} has no uv, which {needs} needs: install uv on the host, or ship a "
            "requirements file and set deploy.installer: pip (or auto)"
        )
    digest = hashlib.sha256()
    digest.update(lock.content)
    digest.update(
        json.dumps(
            {
                "lock_file": lock.name,
                "python": state.venv_python,
                "installer": installer,
                "install_args": list(settings.install_args),
                "wheels": state.wheels,
                "release_wheels": _release_wheels(release, settings.install_args),
            },
            sort_keys=True,
        ).encode()
    )
    return EnvironmentPlan(
        hash=digest.hexdigest()[:16],
        lock_file=lock.name,
        kind=lock.kind,
        installer=installer,
        venv_python=settings.venv_python,
        install_args=tuple(settings.install_args),
    )


def prepare(
    host: HostProgress,
    settings: Settings,
    release: Release,
    owner: LockOwner,
    reporter: Reporter,
) -> None:
    """Build or reuse the environment on one host, link it, publish the release."""
    environment = plan(host, settings, release)
    track = secrets.token_hex(6)
    script = environment_script(
        host.transport.target.root, owner=owner, release=release.id, plan=environment, track=track
    )

    def stream(kind: str, line: str) -> None:
        if kind == "stderr":
            reporter.stream(host.name, line)

    with host.attempt(Step.UPLOADED):
        try:
            result = checked(
                run_tracked(host, script, track, timeout=settings.command_timeout, on_line=stream),
                "environment",
            )
        except HostError as error:
            raise HostError(
                f"building the environment from {environment.lock_file} failed on "
                f"{host.name}; nothing was switched:\n{error}"
            ) from None
    status = (parse_output(result.stdout).get("env") or ["?"])[0].split()
    host.environment = status[0]
    if status[0] == "built":
        reporter.note(f"  {host.name}: built environment {environment.hash}")
    else:
        reporter.note(f"  {host.name}: environment {environment.hash} unchanged, reused")
