"""``python -m deploytools.datamig status|check|apply|revert``: the runner's command line.

A thin shell: parse flags, load the env file, call :mod:`deploytools.datamig.runner`, print the
answer and map exceptions to the exit codes of DESIGN §6 in :func:`exit_code_for` (0 ok,
1 failed, 2 bad files/config/arguments, 3 lock held).

Streams: everything the runner logs and everything migrations print (subprocesses included)
goes to stderr as it happens, line by line, secrets masked (:mod:`.streams`). Stdout carries
only the answer: a table for people, or with ``--json`` exactly one JSON object, always with
``"protocol"``; when the command fails that object also has ``"error"`` (masked) and
``"exit_code"``, so a client can tell "the runner answered with an error" from "no answer".
A client that went away (EPIPE, SIGHUP) does not change the outcome; SIGTERM and SIGINT stop
the run cleanly (:mod:`.interrupts`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, TextIO

from deploytools.datamig import PROTOCOL
from deploytools.datamig.discovery import PHASES
from deploytools.datamig.envfile import read_env_file, secret_values, url_password
from deploytools.datamig.interrupts import interrupts
from deploytools.datamig.render import console_for, format_duration, render_status
from deploytools.datamig.results import StatusReport
from deploytools.datamig.streams import (
    OutputPump,
    RedactingWriter,
    SafeWriter,
    configure_logging,
    quiet_streams_at_exit,
)
from deploytools.exceptions import DeployToolsError, Interrupted, MigrationFailed, UsageError
from deploytools.redact import redact, url_passwords

PROG = "python -m deploytools.datamig"
COMMANDS = ("status", "check", "apply", "revert", "session")


def exit_code_for(error: BaseException) -> int:
    """The exit code of DESIGN §6 for an error: 2 bad files/config, 3 lock held, 1 otherwise."""
    if isinstance(error, DeployToolsError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return Interrupted.exit_code
    return 1


# --------------------------------------------------------------------------- arguments


def _number(value: str, flag: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag}: {value!r} is not a number of seconds") from None
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"{flag}: {value!r} is not a number of seconds")
    return seconds


def _lock_seconds(value: str) -> float:
    seconds = _number(value, "--lock-timeout")
    if seconds < 0:
        raise argparse.ArgumentTypeError(
            f"--lock-timeout cannot be negative ({value}); 0 means do not wait"
        )
    return seconds


def _positive_seconds(flag: str) -> Any:
    def parse(value: str) -> float:
        seconds = _number(value, flag)
        if seconds <= 0:
            raise argparse.ArgumentTypeError(f"{flag} must be more than 0 seconds, not {value}")
        return seconds

    return parse


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is a UsageError (exit 2, JSON answer with ``--json``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{PROG} {self._command()}--help`)")

    def _command(self) -> str:
        words = self.prog.split()
        return f"{words[-1]} " if words[-1] in COMMANDS else ""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument(
        "--path", default="migrations", metavar="DIR", help="migrations folder (%(default)s)"
    )
    common.add_argument(
        "--root", metavar="DIR", help="deploy root; the SQLite ledger is <root>/shared/"
    )
    common.add_argument(
        "--database-url", metavar="URL", help="ledger database (default: $DATABASE_URL)"
    )
    common.add_argument(
        "--env-file", metavar="FILE", help="KEY=VALUE file read first; set variables win"
    )
    common.add_argument(
        "--release", metavar="ID", help="apply: the release id to record; revert: what to revert"
    )
    common.add_argument(
        "--lock-timeout",
        type=_lock_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for another runner (%(default)g; 0: do not wait)",
    )
    common.add_argument(
        "--dry-run", action="store_true", help="list what would run; run and write nothing"
    )
    common.add_argument(
        "--phase",
        choices=PHASES,
        help="apply: only pending migrations of this phase (default: every phase)",
    )
    common.add_argument(
        "--statement-timeout",
        type=_positive_seconds("--statement-timeout"),
        metavar="S",
        help="PostgreSQL statement_timeout of ctx.db, in seconds",
    )
    common.add_argument(
        "--pg-lock-timeout",
        type=_positive_seconds("--pg-lock-timeout"),
        metavar="S",
        help="PostgreSQL lock_timeout of ctx.db, in seconds",
    )
    parser = _Parser(
        prog=PROG,
        description="Run-once data migrations with a ledger and a runner lock.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    commands.add_parser("status", parents=[common], help="show every migration's state (read-only)")
    commands.add_parser(
        "check",
        parents=[common],
        help="import pending migrations, connect to the ledger and Redis; apply nothing",
    )
    commands.add_parser("apply", parents=[common], help="apply the pending migrations")
    commands.add_parser(
        "session",
        parents=[common],
        help="check, then apply a phase for each `apply PHASE` line read on stdin (a deploy)",
        description="One runner for a whole deploy: answers `check` at once, then one JSON "
        "line per `apply PHASE` line read on stdin, until stdin ends or says `quit`. Saves "
        "the interpreter start and imports of a second runner.",
    )
    revert = commands.add_parser(
        "revert",
        parents=[common],
        help="revert VERSION, or every migration applied by --release ID",
        description="Revert VERSION, or (with --release ID) the migrations that release "
        "applied, newest first.",
    )
    revert.add_argument("version", nargs="?", metavar="VERSION")
    revert.add_argument(
        "--skip-irreversible",
        action="store_true",
        help="revert what can be reverted; leave migrations without revert(ctx) applied",
    )
    return parser


# --------------------------------------------------------------------------- output


def render_apply(result: Any, out: TextIO) -> None:
    console = console_for(out)
    if result.dry_run:
        if not result.would_apply:
            console.print("dry run: nothing to apply", markup=False)
        for migration in result.would_apply:
            console.print(
                f"would apply {migration.version} {migration.name} ({migration.phase})",
                markup=False,
            )
        return
    for done in result.applied:
        console.print(
            f"applied {done.version} {done.name} in {format_duration(done.duration_ms)}",
            style="green",
            markup=False,
        )
    if result.failed:
        console.print(
            f"FAILED {result.failed.version} {result.failed.name}: {result.failed.error}",
            style="bold red",
            markup=False,
        )
        not_run = result.pending_before - len(result.applied) - 1
        if not_run:
            console.print(f"{not_run} later migration(s) not run", markup=False)
    elif result.interrupted:
        console.print(f"interrupted by {result.interrupted}", style="bold red", markup=False)
    elif not result.applied:
        console.print("nothing to apply", markup=False)


def render_revert(result: Any, out: TextIO) -> None:
    console = console_for(out)
    if result.dry_run:
        for row in result.would_revert:
            console.print(f"would revert {row.version} {row.name}", markup=False)
    for done in result.reverted:
        console.print(
            f"reverted {done.version} {done.name} in {format_duration(done.duration_ms)}",
            style="green",
            markup=False,
        )
    for row in result.not_revertible:
        console.print(f"not revertible: {row.version} {row.name}", style="yellow", markup=False)
    if result.failed:
        console.print(
            f"FAILED to revert {result.failed.version} {result.failed.name}: {result.failed.error}",
            style="bold red",
            markup=False,
        )
    elif not (result.reverted or result.would_revert or result.not_revertible):
        console.print("nothing to revert", markup=False)


def render_check(report: Any, out: TextIO) -> None:
    console = console_for(out)
    console.print(
        f"ledger {report.ledger} (id {report.ledger_id or 'not created yet'}): "
        f"{report.applied} applied",
        markup=False,
    )
    for migration in report.pending:
        console.print(
            f"pending {migration.version} {migration.name} ({migration.phase}): imports",
            markup=False,
        )
    if not report.pending:
        console.print("nothing pending", markup=False)
    console.print("check passed", style="green", markup=False)


RENDERERS = {
    "status": render_status,
    "check": render_check,
    "apply": render_apply,
    "revert": render_revert,
}


# --------------------------------------------------------------------------- main


def release_here() -> str | None:
    """The id in ``./.release.json``: run inside a deployed release, ``apply`` records it
    in the ledger without ``--release``."""
    try:
        return str(json.loads(Path(".release.json").read_text())["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def collect_secrets(database_url: str | None, *environments: dict[str, str]) -> list[str]:
    """Every value to mask: URL passwords and the values of secret-looking variables, from the
    environment and the env file (also its values the environment overrides)."""
    found = set(url_passwords(database_url) + (url_password(database_url) if database_url else []))
    for environ in environments:
        found.update(secret_values(environ))
    return sorted(found)


def load_env_file(args: argparse.Namespace) -> dict[str, str]:
    """``--env-file``'s variables, added to the environment where it has none of its own."""
    file_vars = read_env_file(Path(args.env_file)) if args.env_file else {}
    for key, value in file_vars.items():
        os.environ.setdefault(key, value)
    return file_vars


def _run(args: argparse.Namespace, secrets: list[str]) -> Any:
    """Run the command; returns its result object."""
    from deploytools.datamig import runner

    file_vars = load_env_file(args)
    secrets[:] = collect_secrets(args.database_url, dict(os.environ), file_vars)
    if args.command == "revert" and (args.version is None) == (args.release is None):
        raise UsageError("revert needs exactly one of VERSION or --release ID")
    settings = runner.Settings.from_environ(
        path=Path(args.path),
        root=Path(args.root) if args.root else None,
        database_url=args.database_url,
        release=(args.release or release_here()) if args.command == "apply" else None,
        lock_timeout=args.lock_timeout,
        dry_run=args.dry_run,
        phase=args.phase,
        statement_timeout=args.statement_timeout,
        pg_lock_timeout=args.pg_lock_timeout,
        extra_secrets=list(secrets),
    )
    if args.command == "status":
        return runner.status(settings)
    if args.command == "check":
        return runner.check(settings)
    if args.command == "apply":
        return runner.apply(settings)
    return runner.revert(
        settings, args.version, release=args.release, skip_irreversible=args.skip_irreversible
    )


def _error_message(error: BaseException) -> str:
    if isinstance(error, DeployToolsError):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        what = str(error) if str(error).startswith("interrupted") else "interrupted"
        return f"{what}; no migration was running"
    logging.getLogger("deploytools.datamig").error(
        "unexpected error", exc_info=(type(error), error, error.__traceback__)
    )
    return f"unexpected {type(error).__name__}: {error}"


def answer(
    result: Any, error: str | None, exit_code: int, fields: dict[str, Any]
) -> dict[str, Any]:
    """The one JSON object of ``--json``: the result (if any), what the error knew (e.g. the
    ledger), and ``error``/``exit_code`` when the command failed."""
    data: dict[str, Any] = {"protocol": PROTOCOL}
    if result is not None:
        data.update(result.to_json())
    for key, value in fields.items():
        data.setdefault(key, value)
    if error is not None:
        data["error"] = error
        data["exit_code"] = exit_code
    return data


def redact_data(data: Any, redactor: Any) -> Any:
    """``data`` with every string masked, before it is encoded (JSON escapes would hide a
    secret holding a quote or a backslash from masking afterwards)."""
    if isinstance(data, str):
        return redactor(data)
    if isinstance(data, dict):
        return {key: redact_data(value, redactor) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(value, redactor) for value in data]
    return data


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    # Migrations and what they import come from the release: keep __pycache__ out of it.
    sys.dont_write_bytecode = True
    argv = sys.argv[1:] if argv is None else list(argv)
    secrets: list[str] = []

    def redactor(text: str) -> str:
        return redact(text, secrets)

    json_mode = "--json" in argv
    command = next((word for word in argv if word in COMMANDS), "")  # until parsed
    if command == "session":
        return session(argv, secrets, redactor)
    result, error_text, code, fields = None, None, 0, {}
    pump = OutputPump(redactor)
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        secrets[:] = collect_secrets(args.database_url, dict(os.environ))
        interrupts.install()
        pump.start()
        configure_logging()
        result = _run(args, secrets)
        if not getattr(result, "ok", True):
            code = MigrationFailed.exit_code
            error_text = result.error_message("reverting" if command == "revert" else "applying")
    except SystemExit:
        raise  # --help
    except BaseException as error:
        code = exit_code_for(error)
        error_text = _error_message(error)
        fields = getattr(error, "fields", {})
    finally:
        if error_text is not None:
            with contextlib.suppress(OSError, ValueError):
                print(redactor(f"datamig: error: {error_text}"), file=sys.stderr, flush=True)
        pump.stop()
    out = RedactingWriter(SafeWriter(1), redactor)
    if json_mode:
        data = redact_data(answer(result, error_text, code, fields), redactor)
        out.write(json.dumps(data) + "\n")
    elif command == "status" and result is not None:
        # masked before the table wraps long cells (a secret cut in two would escape masking)
        render_status(StatusReport.from_json(redact_data(result.to_json(), redactor)), out)
    elif result is not None:
        RENDERERS[command](result, out)
    out.flush()
    quiet_streams_at_exit()
    return code


def session(argv: list[str], secrets: list[str], redactor: Any) -> int:
    """``session``: ``check`` answered at once, then one ``apply`` per ``apply PHASE`` line
    read on stdin, each answer one JSON line on stdout, until stdin ends (the client is done,
    or gone: nothing more is applied) or a step is interrupted. A migration reading stdin
    reads nothing: the session's own lines never reach it.

    With ``--await-release`` the session starts before its release is in place (a deploy
    starts it during the upload): it imports what every step needs, answers ``ready``, and
    checks once told ``check releases/ID``."""
    await_release = AWAIT_RELEASE in argv
    argv = [word for word in argv if word != AWAIT_RELEASE]
    commands = os.fdopen(os.dup(0), "r")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    pump = OutputPump(redactor)
    code = 0
    try:
        args = build_parser().parse_args(["check" if w == "session" else w for w in argv])
        secrets[:] = collect_secrets(args.database_url, dict(os.environ))
        interrupts.install()
        pump.start()
        configure_logging()
        if await_release:
            try:
                entered = _enter_release_when_told(args, commands, pump)
            except UsageError as error:
                print(redactor(f"datamig: error: {error}"), file=sys.stderr, flush=True)
                return UsageError.exit_code
            if not entered:
                return 0  # the deploy ended before its check: nothing was done
        step = "check"
        while True:
            args.command = step
            code, interrupted = _session_step(args, secrets, pump, redactor)
            if (code not in (0, 1) and step == "check") or interrupted:
                return code
            line = commands.readline()
            verb, _, phase = line.strip().partition(" ")
            if verb != "apply" or phase not in PHASES:
                return code  # end of stdin, `quit`, or nothing this runner knows
            step, args.phase = "apply", phase
    except SystemExit:
        raise
    finally:
        pump.stop()
        quiet_streams_at_exit()


AWAIT_RELEASE = "--await-release"


def _enter_release_when_told(args: argparse.Namespace, commands: TextIO, pump: Any) -> bool:
    """An early session: import SQLAlchemy and the ledger's driver (most of a runner's
    start) while the release is still arriving, answer ``ready``, then enter the release the
    client names. False at the end of stdin (the deploy stopped before its check)."""
    from deploytools.datamig import runner

    with contextlib.suppress(Exception):  # a bad file is the check's to report
        load_env_file(args)
    url = args.database_url or os.environ.get("DATABASE_URL")
    runner.warm_up(url, Path(args.root) if args.root else None)
    pump.answer(json.dumps({"protocol": PROTOCOL, "command": "ready", "exit_code": 0}) + "\n")
    verb, _, directory = commands.readline().strip().partition(" ")
    if verb != "check":
        return False
    parts = Path(directory).parts
    if len(parts) != 2 or parts[0] != "releases" or parts[1] in (".", ".."):
        raise UsageError(f"the session was sent {directory!r}, not releases/ID")
    before = os.getcwd()
    os.chdir(directory)
    here = os.getcwd()
    # ``python -m`` put the start directory first on sys.path: migrations import the
    # release's own modules
    sys.path[:] = [here if entry in (before, "") else entry for entry in sys.path]
    return True


def _session_step(
    args: argparse.Namespace, secrets: list[str], pump: OutputPump, redactor: Any
) -> tuple[int, bool]:
    """One command of a session, answered on stdout: (exit code, interrupted)."""
    result, error_text, code, fields, interrupted = None, None, 0, {}, False
    try:
        result = _run(args, secrets)
        if not getattr(result, "ok", True):
            code = MigrationFailed.exit_code
            error_text = result.error_message("applying")
    except BaseException as error:
        code = exit_code_for(error)
        error_text = _error_message(error)
        fields = getattr(error, "fields", {})
        interrupted = isinstance(error, KeyboardInterrupt)
    if error_text is not None:
        with contextlib.suppress(OSError, ValueError):
            print(redactor(f"datamig: error: {error_text}"), file=sys.stderr, flush=True)
    data = redact_data(answer(result, error_text, code, fields), redactor)
    pump.answer(json.dumps({**data, "command": args.command}) + "\n")
    return code, interrupted


def exit_at_once(code: int) -> NoReturn:
    """The end of a session: every answer is out, every migration committed or rolled
    back, every engine disposed. Flush, then skip the interpreter's teardown (collecting
    SQLAlchemy's and the migrations' modules: 20-40 ms a deploy would wait for)."""
    logging.shutdown()
    quiet_streams_at_exit()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    if sys.argv[1:2] == ["session"]:
        exit_at_once(code)
    sys.exit(code)
