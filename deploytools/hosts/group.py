"""Running one phase on many hosts: in parallel, and as a barrier.

A phase starts on every host at once and ends when every host has finished it, whatever
happened elsewhere; only then does the caller look at failures. Ctrl-C waits for the commands
in flight (they cannot be recalled from a remote host), so the caller can undo what they did.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable
from typing import TypeVar

from ..config import Settings
from ..exceptions import DeployToolsError, HostError, LockHeld, NeedsPerson, UsageError
from ..layout import Code, HostState
from .transport import CommandResult, Transport, open_transport

T = TypeVar("T")


class HostGroup:
    """The hosts of one command, a transport each (one connection per host for the whole
    command). Use as a context manager: connections close at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.transports: dict[str, Transport] = {
            target.name: open_transport(target, settings) for target in settings.targets
        }
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(32, len(self.transports)), thread_name_prefix="host"
        )

    def __enter__(self) -> HostGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for transport in self.transports.values():
            transport.close()

    @property
    def names(self) -> list[str]:
        return list(self.transports)

    def run(
        self,
        phase: str,
        action: Callable[[Transport], T],
        hosts: Iterable[str] | None = None,
    ) -> dict[str, T]:
        """Run ``action`` on every host (or ``hosts``) in parallel and wait for all of them.
        Raises the combined error, naming each failed host and the phase."""
        names = list(self.transports) if hosts is None else list(hosts)
        futures = {name: self._pool.submit(action, self.transports[name]) for name in names}
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


def phase_error(phase: str, errors: dict[str, BaseException]) -> DeployToolsError:
    """One exception for a phase that failed on some hosts: the class of the most serious
    failure (a person needed, else the first host's), a message naming every host."""
    if len(errors) == 1:
        ((host, error),) = errors.items()
        message = f"{phase} failed on {host}: {_describe(error)}"
    else:
        lines = "".join(f"\n  - {host}: {_describe(error)}" for host, error in errors.items())
        message = f"{phase} failed on {len(errors)} hosts:{lines}"
    kinds = [error for error in errors.values() if isinstance(error, DeployToolsError)]
    serious = [error for error in kinds if isinstance(error, NeedsPerson)]
    template = (serious or kinds or [HostError("")])[0]
    combined = type(template)(message)
    combined.hosts = list(errors)  # type: ignore[attr-defined]
    return combined


def _describe(error: BaseException) -> str:
    if isinstance(error, DeployToolsError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def checked(result: CommandResult, what: str) -> CommandResult:
    """``result`` if the script succeeded, else a HostError carrying its message (LockHeld
    when the deploy lock is taken, with its owner)."""
    if result.ok:
        return result
    if result.exit_code == Code.LOCKED:
        owner = HostState.parse(result.stdout).lock
        holder = owner.describe() if owner else "an unknown owner (no owner.json)"
        raise LockHeld(
            f"the deploy lock is held by {holder}; nothing was changed. If no deploy is "
            "running, remove it with `invoke lock.release`"
        )
    if result.connection_lost:
        raise HostError(f"the connection was lost during {what}")
    detail = result.stderr.strip() or result.stdout.strip() or "no output"
    if result.exit_code in _NOTHING_CHANGED_CODES:
        # a host that is not set up, a taken release id, a missing shared file or a Python
        # without deploytools: found in preflight, before anything changed (exit 2)
        raise UsageError(detail)
    raise HostError(f"{detail} (exit {result.exit_code})")


_NOTHING_CHANGED_CODES = {
    Code.NOT_SET_UP,
    Code.RELEASE_EXISTS,
    Code.SHARED_MISSING,
    Code.NO_PYTHON,
    Code.NO_RELEASE,
}
