"""Running one phase on many hosts: in parallel, and as a barrier.

A phase starts on every host at once and ends when every host has finished it, whatever
happened elsewhere; only then does the caller look at failures. Ctrl-C waits for the commands
in flight (they cannot be recalled from a remote host), so the caller can undo what they did.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterable
from typing import TypeVar

from ..config import Settings, Target
from ..exceptions import DeployToolsError, HostError, LockHeld, NeedsPerson, UsageError
from ..layout import Code, HostState
from .transport import CommandResult, Transport, open_transport

T = TypeVar("T")
MAX_THREADS = 32  # threads (and so commands in flight) at once, whatever the number of hosts


def _quietly_connect(transport: Transport) -> None:
    """Connect ahead of time; a failure is reported by the first real command instead."""
    connect = getattr(transport, "connect", None)
    if connect is None:
        return
    with contextlib.suppress(Exception):
        connect()


class HostGroup:
    """The hosts of one command, a transport each (one connection per host for the whole
    command). Use as a context manager: connections close at the end."""

    def __init__(self, settings: Settings, targets: Iterable[Target] | None = None) -> None:
        self.settings = settings
        self._targets = list(settings.targets if targets is None else targets)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, min(MAX_THREADS, len(self._targets))), thread_name_prefix="host"
        )
        self._opening: dict[str, concurrent.futures.Future[Transport]] = {}
        self._transports: dict[str, Transport] | None = None

    def connect_in_background(self) -> None:
        """Start connecting to every host now (a deploy overlaps this with its build); the
        first command on a host waits for its connection, and reports its failure. The
        transports are made in the connecting threads too: making the first SSH one imports
        paramiko and Fabric (about 60 ms), which the build need not wait for."""
        for target in self._targets:
            self._opening[target.name] = self._pool.submit(self._open_and_connect, target)

    def _open_and_connect(self, target: Target) -> Transport:
        transport = open_transport(target, self.settings)
        _quietly_connect(transport)
        return transport

    @property
    def transports(self) -> dict[str, Transport]:
        """Every host's transport by name (waiting for those being made in the background)."""
        if self._transports is None:
            self._transports = {
                target.name: (
                    self._opening[target.name].result()
                    if target.name in self._opening
                    else open_transport(target, self.settings)
                )
                for target in self._targets
            }
        return self._transports

    def __enter__(self) -> HostGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        opened = dict(self._transports or {})
        for name, future in self._opening.items():
            if name not in opened and future.exception() is None:
                opened[name] = future.result()
        for transport in opened.values():
            transport.close()

    @property
    def names(self) -> list[str]:
        return [target.name for target in self._targets]

    def run(
        self,
        phase: str,
        action: Callable[[Transport], T],
        hosts: Iterable[str] | None = None,
    ) -> dict[str, T]:
        """Run ``action`` on every host (or ``hosts``) in parallel and wait for all of them.
        Raises the combined error, naming each failed host and the phase."""
        transports = self.transports
        names = list(transports) if hosts is None else list(hosts)
        futures = {name: self._pool.submit(action, transports[name]) for name in names}
        try:
            concurrent.futures.wait(futures.values())
        except KeyboardInterrupt:
            _wait_through_interrupts(futures.values())
            raise
        results: dict[str, T] = {}
        errors: dict[str, BaseException] = {}
        for name, future in futures.items():
            error = future.exception()
            if error is None:
                results[name] = future.result()
            else:
                errors[name] = error
        if errors:
            raise phase_error(phase, errors)
        return results


def _wait_through_interrupts(futures: Iterable[concurrent.futures.Future]) -> None:
    pending = list(futures)
    while pending:
        try:
            concurrent.futures.wait(pending)
            return
        except KeyboardInterrupt:
            continue


#: The error that wins when hosts fail differently: the most severe exit code (DESIGN §3).
SEVERITY = {4: 4, 3: 3, 2: 2, 1: 1}


def most_severe(errors: Iterable[BaseException]) -> DeployToolsError | None:
    """The DeployToolsError with the highest exit-code precedence: 4 > 3 > 2 > 1."""
    kinds = [error for error in errors if isinstance(error, DeployToolsError)]
    return max(kinds, key=lambda e: SEVERITY.get(e.exit_code, 0), default=None)


def phase_error(phase: str, errors: dict[str, BaseException]) -> DeployToolsError:
    """One exception for a phase that failed on some hosts: the class of the most severe
    failure (exit 4 over 3 over 2 over 1, whatever the host order), a message naming every
    host. ``hosts`` lists them, ``errors`` keeps each host's own exception."""
    if len(errors) == 1:
        ((host, error),) = errors.items()
        message = f"{phase} failed on {host}: {_describe(error)}"
    else:
        lines = "".join(f"\n  - {host}: {_describe(error)}" for host, error in errors.items())
        message = f"{phase} failed on {len(errors)} hosts:{lines}"
    template = most_severe(errors.values()) or HostError("")
    combined = type(template)(message)
    combined.hosts = list(errors)  # type: ignore[attr-defined]
    combined.errors = dict(errors)  # type: ignore[attr-defined]
    return combined


def _describe(error: BaseException) -> str:
    if isinstance(error, DeployToolsError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def checked(result: CommandResult, what: str) -> CommandResult:
    """``result`` if the script succeeded, else the error saying why (LockHeld when the deploy
    lock is taken, carrying its owner; UsageError for what preflight finds before changing
    anything; HostError otherwise, naming a lost connection or a time limit)."""
    if result.ok:
        return result
    if result.exit_code == Code.LOCKED:
        state = HostState.parse(result.stdout)
        holder = state.lock.describe() if state.lock else "an unknown owner (no owner.json)"
        error = LockHeld(
            f"the deploy lock is held by {holder}; nothing was changed. If no deploy is "
            "running, remove it with `invoke lock.release`"
        )
        error.owner = state.lock  # type: ignore[attr-defined]
        raise error
    if result.timed_out:
        tail = _tail(result)
        raise HostError(
            f"{what} ran past its time limit (deploy.command_timeout) and was cut off"
            + (f": {tail}" if tail else "")
        )
    if result.connection_lost:
        raise HostError(
            f"the connection was lost during {what}: {result.stderr.strip()}".rstrip(": ")
        )
    detail = _tail(result) or "no output"
    if result.exit_code == Code.LOCK_LOST:
        raise NeedsPerson(detail)
    if result.exit_code in _NOTHING_CHANGED_CODES:
        # a host that is not set up, a taken release id, a missing shared file or a Python
        # that cannot build environments: found in preflight, before anything changed (exit 2)
        raise UsageError(detail)
    raise HostError(f"{detail} (exit {result.exit_code})")


def _tail(result: CommandResult, lines: int = 20) -> str:
    text = result.stderr.strip() or result.stdout.strip()
    return "\n".join(text.splitlines()[-lines:])


_NOTHING_CHANGED_CODES = {
    Code.NOT_SET_UP,
    Code.RELEASE_EXISTS,
    Code.SHARED_MISSING,
    Code.NO_PYTHON,
    Code.NO_RELEASE,
}
