"""How far each host got in a deploy, "maybe" included, and what undoing that takes.

A command whose connection died, or that ran past its time limit, may or may not have done its
work on the host. Such a step is recorded as ``maybe``: the undo treats it as done, so every
undo action is written to be harmless when the step did not happen (releasing a lock that is
not ours does nothing, switching back a host that never switched rewrites the same link).

The undo reads as a table, state → action (``UNDO``), taken per host from the furthest step
the host may have reached.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from .. import faults
from ..exceptions import DeployToolsError, TransportError
from ..hosts.group import checked
from ..hosts.transport import CommandResult, Transport
from ..layout import HostState


class Step(IntEnum):
    """A host's progress through a deploy, in order."""

    NONE = 0  # nothing done there
    LOCKED = 1  # our deploy lock is held there
    UPLOADED = 2  # releases/.partial-<id> or releases/<id> exists
    SWITCHED = 3  # current -> releases/<id>
    RESTARTED = 4  # `restart` ran in the new release
    FINISHED = 5  # logged, cleaned up, unlocked


#: What undoing a deploy does on a host that may have reached each step.
UNDO: dict[Step, str] = {
    Step.NONE: "nothing",
    Step.LOCKED: "release the lock",
    Step.UPLOADED: "remove the new release, release the lock",
    Step.SWITCHED: "switch back, log the failed attempt, release the lock",
    Step.RESTARTED: "switch back, restart the old release, log, release the lock",
    Step.FINISHED: "nothing (the deploy is over there)",
}


@dataclass
class HostProgress:
    """One host's part in this deploy."""

    transport: Transport
    done: Step = Step.NONE  # the furthest step known to be done
    maybe: Step | None = None  # a step sent whose outcome is unknown
    state: HostState | None = None  # read in preflight, under the lock
    current: str | None = None  # where `current` points now, as far as we know
    hooks: list[dict[str, Any]] = field(default_factory=list)  # --json: hook statuses
    phases: dict[str, float] = field(default_factory=dict)  # --json: seconds per phase
    payload_bytes: int = 0
    files_sent: int = 0
    environment: str | None = None  # "built" or "reused"
    last: CommandResult | None = None  # the result of the last command run for a step
    unreached: bool = False  # the step's first command never reached the host

    @property
    def name(self) -> str:
        return self.transport.target.name

    @property
    def previous(self) -> str | None:
        """Where `current` pointed before this deploy."""
        return self.state.current if self.state else None

    @property
    def reached(self) -> Step:
        """The furthest step this host may have reached: what the undo must assume."""
        return max(self.done, self.maybe or Step.NONE)

    @property
    def undo_action(self) -> str:
        return UNDO[self.reached]

    @contextlib.contextmanager
    def attempt(self, step: Step, *, undone_on_failure: bool = True) -> Iterator[None]:
        """Run the command(s) of ``step``: done on success. On a failure the step is "maybe
        done", unless its last command failed cleanly (an exit code, in time) and the script
        undoes its own work on failure (``undone_on_failure``: lock, upload and switch
        scripts do; hooks and restarts cannot)."""
        self.maybe, self.last, self.unreached = step, None, False
        try:
            yield
        except BaseException:
            last = self.last
            if self.unreached or (
                undone_on_failure
                and last is not None
                and last.exit_code is not None
                and not last.timed_out
            ):
                self.maybe = None
            raise
        self.done, self.maybe = max(self.done, step), None

    def run(
        self,
        script: str,
        what: str,
        *,
        timeout: float | None = None,
        on_line: Callable[[str, str], None] | None = None,
    ) -> CommandResult:
        """One remote command; its result is kept for ``attempt``; a failure raises the
        user's error (``retryable`` when only the connection died)."""
        try:
            result = self.transport.run_script(script, timeout=timeout, on_line=on_line)
        except TransportError:
            # the host could not be reached at all: the command was never sent
            self.unreached = self.last is None
            raise
        if faults.lose_connection(what):
            self.transport.reconnect()  # the command ran; its answer never arrives
            result = CommandResult(None, "", f"connection to {self.name} lost (fault injection)")
        self.last = result
        try:
            return checked(result, what)
        except DeployToolsError as error:
            error.retryable = result.connection_lost  # type: ignore[attr-defined]
            raise

    def settle(self, step: Step) -> None:
        """The undo brought this host back below ``step``."""
        self.done = Step(min(self.done, step))
        self.maybe = None
