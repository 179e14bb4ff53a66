"""The one place that speaks the migration runner's protocol.

The runner (``python -m deploytools.datamig``) always runs on a host, inside a release, with
that host's ``--root`` and ``shared/.env`` (where production secrets live). ``Runner`` builds
its command line (every value quoted), streams its stderr (log and progress lines) as it comes,
reads its one JSON answer, checks the protocol number every answer carries, and turns a bad
answer into the right error. Callers never look at exit codes or raw output themselves.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import queue
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Settings, Target
from .exceptions import (
    DeployToolsError,
    LockHeld,
    MigrationFailed,
    ReleaseNotFound,
    UsageError,
)
from .hosts.transport import NO_LIMIT, InputFeed, Transport
from .layout import Code, datamig_script, stop_runner_script, wait_runner_script
from .lock import LockOwner

RUNNER_MODULE = "deploytools.datamig"
PROTOCOL = 2  # what this client speaks; it also accepts the one before
SPOKEN = (PROTOCOL, PROTOCOL - 1)


class ProtocolMismatch(UsageError):
    """The runner on a host speaks a protocol this client does not (exit 2)."""


@dataclass(frozen=True)
class RunnerAnswer:
    """What one runner invocation returned. ``data`` is its JSON object, or None when the
    output was not one (a crash, a dead session, a runner that could not start)."""

    host: str
    exit_code: int | None
    data: dict[str, Any] | None
    stderr: str
    timed_out: bool = False

    @property
    def connection_lost(self) -> bool:
        return self.exit_code is None and not self.timed_out

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.data is not None and not self.data.get("error")

    def stderr_tail(self, lines: int = 15) -> str:
        return "\n".join(self.stderr.strip().splitlines()[-lines:])

    @property
    def message(self) -> str:
        """The runner's own error message, else the tail of its stderr."""
        if self.data and self.data.get("error"):
            return str(self.data["error"])
        return self.stderr_tail() or "no output"

    def error(self, what: str) -> DeployToolsError:
        """The runner's failure as the exception of the matching exit code."""
        if self.exit_code == Code.NO_RELEASE:
            return ReleaseNotFound(f"{self.stderr_tail()} (host {self.host})")
        if self.exit_code == Code.NOT_SET_UP:  # the script found no deploy root: exit 2
            return UsageError(f"{self.stderr_tail()} (host {self.host})")
        message = f"{what} on {self.host} failed (exit {self.exit_code}): {self.message}"
        if self.exit_code == 2:
            return UsageError(message)
        if self.exit_code == 3:
            return LockHeld(message)
        return MigrationFailed(message)


@dataclass
class CheckReport:
    """The runner's ``check``: what is pending, in which phase, and the ledger it found."""

    ledger: str
    ledger_id: str | None
    pending: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def pending_in(self, phase: str) -> list[dict[str, Any]]:
        return [m for m in self.pending if (m.get("phase") or "after_switch") == phase]


def runner_python(target: Target) -> list[str]:
    """``deploy.python`` as argv (a path, or a command such as ``/usr/bin/env python3``); a
    release with an environment uses its ``.venv/bin/python`` instead (the script decides)."""
    return shlex.split(target.runner_python)


def migration_label(entry: dict[str, Any] | None) -> str:
    """``202002111319_migrate_flags_to_redis`` for a runner JSON entry."""
    if not entry:
        return "?"
    return f"{entry.get('version')}_{entry.get('name')}"


def migration_failed(entry: dict[str, Any], where: str) -> MigrationFailed:
    """The error for a runner's ``failed`` entry; ``.migration`` (version and name) is what
    revisions.jsonl records for the failed attempt."""
    error = MigrationFailed(
        f"migration {migration_label(entry)} failed{where}: {entry.get('error')}"
    )
    error.migration = {"version": entry.get("version"), "name": entry.get("name")}  # type: ignore[attr-defined]
    return error


class Runner:
    """The migration runner on one host, reached through that host's transport."""

    def __init__(
        self,
        transport: Transport,
        settings: Settings,
        *,
        on_line: Callable[[str, str], None] | None = None,
    ) -> None:
        self.transport = transport
        self.settings = settings
        self.on_line = on_line

    @property
    def host(self) -> str:
        return self.transport.target.name

    def call(
        self,
        command: str,
        directory: str,
        args: Sequence[str] = (),
        *,
        owner: LockOwner | None = None,
        timeout: float | None = None,
    ) -> RunnerAnswer:
        """``datamig <command> --json`` in ``<root>/<directory>``: one remote command. With
        ``owner``, the runner's pid is recorded in the deploy lock (it can then be stopped)."""
        argv = self.argv(command, args)
        script = datamig_script(
            self.transport.target.root,
            directory,
            runner_python(self.transport.target),
            argv,
            owner=owner,
        )
        on_line = None
        if self.on_line is not None:
            stream = self.on_line

            def on_line(kind: str, line: str) -> None:
                if kind == "stderr":
                    stream(self.host, line)

        result = self.transport.run_script(script, timeout=timeout, on_line=on_line)
        answer = RunnerAnswer(
            self.host,
            result.exit_code,
            _json_object(result.stdout),
            result.stderr,
            timed_out=result.timed_out,
        )
        self._check_protocol(answer)
        return answer

    def argv(self, command: str, args: Sequence[str]) -> list[str]:
        """The runner's command line after the python (every value a separate word)."""
        settings = self.settings
        argv = ["-m", RUNNER_MODULE, command, "--json", "--path", settings.migrations_path]
        argv += ["--lock-timeout", f"{settings.lock_timeout:g}"]
        if settings.statement_timeout is not None:
            argv += ["--statement-timeout", f"{settings.statement_timeout:g}"]
        if settings.pg_lock_timeout is not None:
            argv += ["--pg-lock-timeout", f"{settings.pg_lock_timeout:g}"]
        return argv + list(args)

    def _check_protocol(self, answer: RunnerAnswer) -> None:
        if answer.data is None:
            return
        spoken = answer.data.get("protocol")
        if spoken in SPOKEN:
            return
        if isinstance(spoken, int) and spoken > PROTOCOL:
            side = "upgrade deploytools on this machine (the client), e.g. from the same lock file"
        else:
            side = "upgrade deploytools on the hosts (in the application's lock file)"
        raise ProtocolMismatch(
            f"the migration runner on {self.host} speaks protocol "
            f"{'unknown (older)' if spoken is None else spoken}; "
            f"this deploytools speaks {PROTOCOL} and {PROTOCOL - 1}: {side}. Nothing was changed."
        )

    # -- commands ---------------------------------------------------------------------------

    def check(
        self, directory: str, *, owner: LockOwner | None = None, path: str | None = None
    ) -> CheckReport:
        """Import every pending migration, reach the ledger (and Redis), validate: exit 2
        findings become a UsageError; nothing is applied. ``path``: another migrations
        folder than the release's own (a dry run's staged copy)."""
        answer = self.call("check", directory, ["--path", path] if path else [], owner=owner)
        return self.check_report(answer)

    def check_report(self, answer: RunnerAnswer) -> CheckReport:
        """A ``check`` answer as a report, or the error it means (exit 2 for a finding)."""
        if answer.ok and answer.data is not None:
            data = answer.data
            return CheckReport(
                ledger=str(data.get("ledger") or ""),
                ledger_id=data.get("ledger_id"),
                pending=list(data.get("pending") or []),
                warnings=[str(w) for w in data.get("warnings") or []],
            )
        if answer.data is None and not answer.connection_lost and not answer.timed_out:
            python = " ".join(runner_python(self.transport.target))
            raise UsageError(
                f"the migration runner did not start on {self.host} (exit {answer.exit_code}): "
                f"{answer.stderr_tail()}\nAdd deploytools to the application's lock file, or "
                f"point deploy.python (now {python!r}) at a Python that imports it."
            )
        if answer.connection_lost or answer.timed_out:
            from .exceptions import HostError

            raise HostError(f"the check step on {self.host} got no answer: {answer.message}")
        error = answer.error("the check step")
        if answer.exit_code not in (2, 3):
            error = UsageError(str(error))  # the check changes nothing: a finding is exit 2
        raise error

    def session(self, directory: str, *, owner: LockOwner) -> Session:
        """One runner for the rest of a deploy (``datamig session``): it checks at once,
        then applies each phase when told. Saves a second interpreter start and import."""
        return Session(self, directory, owner)

    def early_session(self, *, owner: LockOwner) -> Session:
        """A session started before the release is in place (during the upload): its
        interpreter start and imports overlap the transfer; ``Session.enter`` then names the
        release to check."""
        return Session(self, ".", owner, early=True)

    def apply(
        self, directory: str, *, release: str, phase: str, owner: LockOwner | None
    ) -> RunnerAnswer:
        timeout = self.settings.datamig_timeout
        return self.call(
            "apply",
            directory,
            ["--release", release, "--phase", phase],
            owner=owner,
            timeout=NO_LIMIT if timeout is None else timeout,
        )

    def status(self, directory: str) -> RunnerAnswer:
        return self.call("status", directory)

    def revert(self, directory: str, *, release: str, skip_irreversible: bool) -> RunnerAnswer:
        args = ["--release", release]
        if skip_irreversible:
            args.append("--skip-irreversible")
        return self.call("revert", directory, args, timeout=NO_LIMIT)

    # -- a runner that may still be running --------------------------------------------------

    def stop(self, grace: float = 10) -> None:
        """SIGTERM the runner recorded in the deploy lock (SIGKILL after ``grace`` s) and
        return once it is gone: it rolls back the migration in flight."""
        result = self.transport.run_script(stop_runner_script(self.transport.target.root, grace))
        if not result.ok:
            raise _unsettled(self.host, result.stderr.strip() or "no answer")

    def wait(self, seconds: float | None) -> None:
        """Return once the runner recorded in the deploy lock has exited (``seconds``: at
        most that long, None: no limit)."""
        result = self.transport.run_script(
            wait_runner_script(self.transport.target.root, seconds),
            timeout=NO_LIMIT if seconds is None else seconds + 30,
        )
        if not result.ok:
            raise _unsettled(self.host, result.stderr.strip() or "no answer")


class Session:
    """A runner that answers one JSON line per step: ``check`` at once, then ``apply PHASE``
    for each phase it is sent, until its stdin is closed. Its log lines stream as they come.
    If its command ends early (a lost connection, a stop), a step answers like a one-shot
    call that ended the same way, and later steps fall back to one-shot calls."""

    def __init__(
        self, runner: Runner, directory: str, owner: LockOwner, *, early: bool = False
    ) -> None:
        self.runner = runner
        self.feed = InputFeed()
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="runner")
        script = datamig_script(
            runner.transport.target.root,
            directory,
            runner_python(runner.transport.target),
            runner.argv("session", ["--await-release"] if early else []),
            owner=owner,
        )
        self._command = self._pool.submit(
            runner.transport.run_script,
            script,
            timeout=NO_LIMIT,
            on_line=self._line,
            feed=self.feed,
        )

    def _line(self, kind: str, line: str) -> None:
        if kind == "stderr":
            self._stderr.append(line)
            if self.runner.on_line is not None:
                self.runner.on_line(self.runner.host, line)
            return
        data = _json_object(line)
        if data is not None:
            self._answers.put(data)

    @property
    def alive(self) -> bool:
        return not self._command.done()

    def next_answer(self, timeout: float | None = None) -> RunnerAnswer:
        """The next step's answer; the command's own end when it stopped answering; a
        timed-out answer after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                data = self._answers.get(timeout=0.05)
            except queue.Empty:
                if self._command.done() and self._answers.empty():
                    result = self._command.result()
                    stderr = result.stderr or "\n".join(self._stderr)
                    exit_code = result.exit_code if result.exit_code not in (0, None) else None
                    if result.connection_lost or result.timed_out:
                        exit_code = None
                    return RunnerAnswer(
                        self.runner.host, exit_code, None, stderr, timed_out=result.timed_out
                    )
                if deadline is not None and time.monotonic() >= deadline:
                    return RunnerAnswer(
                        self.runner.host, None, None, "\n".join(self._stderr), timed_out=True
                    )
                continue
            answer = RunnerAnswer(
                self.runner.host, int(data.get("exit_code", 0)), data, "\n".join(self._stderr)
            )
            self.runner._check_protocol(answer)
            return answer

    def enter(self, directory: str) -> bool:
        """An early session: wait until its runner is ready, then send it the release to
        check. False when it never became ready (it ended: a runner that predates early
        sessions rejects the flag, or the connection was lost); the caller then closes it and
        starts an ordinary session, which reports any real problem."""
        answer = self.next_answer()
        if answer.data is None or answer.data.get("command") != "ready":
            return False
        self.feed.send(f"check {directory}\n")
        return True

    def check(self) -> CheckReport:
        return self.runner.check_report(self.next_answer())

    def apply(self, phase: str) -> RunnerAnswer:
        self.feed.send(f"apply {phase}\n")
        timeout = self.runner.settings.datamig_timeout
        return self.next_answer(timeout)

    def end(self) -> None:
        """No more steps: the runner reads the end of its stdin and exits, while the deploy
        goes on (``close`` waits for it)."""
        self.feed.close()

    def close(self, wait: float = 30) -> None:
        """End the session: the runner reads the end of its stdin and exits."""
        self.feed.close()
        with contextlib.suppress(Exception):
            self._command.result(timeout=wait)
        self._pool.shutdown(wait=False)


def _unsettled(host: str, why: str) -> DeployToolsError:
    from .exceptions import NeedsPerson

    return NeedsPerson(f"cannot tell whether the migration runner on {host} still runs: {why}")


def _json_object(stdout: str) -> dict[str, Any] | None:
    """The runner's one JSON object (the last line that is one: stdout holds nothing else)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        return parsed if isinstance(parsed, dict) else None
    try:
        parsed = json.loads(stdout)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None
