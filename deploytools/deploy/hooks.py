"""Hooks (``before_switch``), ``restart`` and ``health``: the application's own commands.

They run on the hosts with the release's environment (``VIRTUAL_ENV``, its ``bin`` first on
``PATH``) and ``shared/.env`` loaded; their output streams to the deploy's output as it comes,
prefixed with the host, and ``--json`` records each command's exit status and duration. A
command that leaves a process holding its output (a server started without redirecting it)
would keep the SSH channel open: the host names that process and the hook fails.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Sequence

from ..config import Settings
from ..exceptions import HostError
from ..hosts.transport import CommandResult
from ..layout import hooks_script, parse_output, restart_script, untrack_script
from ..lock import LockOwner
from ..output import Reporter
from .state import HostProgress


def run_hooks(
    host: HostProgress,
    directory: str,
    name: str,
    commands: Sequence[str],
    owner: LockOwner | None,
    reporter: Reporter,
) -> None:
    """``commands`` in ``<root>/<directory>`` on one host; a failure raises HostError with
    the command's (masked) output."""
    track = secrets.token_hex(6)
    script = hooks_script(host.transport.target.root, directory, name, commands, owner, track)
    _run(host, script, name, reporter, timeout=None, track=track)


def restart(
    host: HostProgress, settings: Settings, owner: LockOwner | None, reporter: Reporter
) -> None:
    """This host's ``restart`` commands in ``current``, then ``health`` until it passes
    (or ``health_timeout`` ends): one command."""
    target = host.transport.target
    if not (target.restart or target.health):
        return
    track = secrets.token_hex(6)
    script = restart_script(
        target.root,
        restart=target.restart,
        health=target.health,
        health_timeout=settings.health_timeout,
        owner=owner,
        track=track,
    )
    timeout = settings.command_timeout + settings.health_timeout
    _run(host, script, "restart", reporter, timeout=timeout, track=track)


def _run(
    host: HostProgress,
    script: str,
    name: str,
    reporter: Reporter,
    *,
    timeout: float | None,
    track: str,
) -> CommandResult:
    def stream(kind: str, line: str) -> None:
        if kind == "stderr":
            reporter.stream(host.name, line)

    result = run_tracked(host, script, track, timeout=timeout, on_line=stream)
    fields = parse_output(result.stdout)
    for value in fields.get("hook", []):
        label, code, ms = [*value.split(), "", "", ""][:3]
        host.hooks.append({"hook": label, "exit_status": _int(code), "duration_ms": _int(ms)})
    if fields.get("health"):
        host.hooks.append({"hook": "health", "exit_status": 0, "tries": _int(fields["health"][0])})
    if result.ok:
        return result
    holders = fields.get("holder", [])
    if holders or result.held_open:
        what = holders[0] if holders else "a process it started"
        raise HostError(
            f"{name} on {host.name} left {what} holding its output, which keeps the SSH "
            "channel open: start servers under systemd, or with "
            "`nohup … </dev/null >/dev/null 2>&1 &`"
        )
    tail = "\n".join(reporter.strip_secrets(result.stderr).strip().splitlines()[-20:])
    if result.timed_out:
        raise HostError(f"{name} on {host.name} ran past its time limit and was cut off:\n{tail}")
    if result.connection_lost:
        error = HostError(f"the connection to {host.name} was lost during {name}:\n{tail}")
        error.retryable = True  # type: ignore[attr-defined]
        raise error
    raise HostError(f"{name} failed on {host.name} (exit {result.exit_code}):\n{tail}")


def run_tracked(
    host: HostProgress,
    script: str,
    track: str,
    *,
    timeout: float | None,
    on_line: Callable[[str, str], None],
) -> CommandResult:
    """Run a script that runs the application's commands; if it outlives its time limit,
    keeps its output open or loses its connection (a command outlives its client), stop what
    it still runs on the host: nothing keeps working unobserved after the deploy gave up on
    it."""
    result = host.transport.run_script(script, timeout=timeout, on_line=on_line)
    host.last = result
    if result.timed_out or result.held_open or result.connection_lost:
        with contextlib.suppress(Exception):
            host.transport.run_script(untrack_script(host.transport.target.root, track))
    return result


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
