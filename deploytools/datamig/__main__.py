"""``python -m deploytools.datamig status|apply|revert``: the command line of the runner.

A thin shell: parse flags, load the env file, call :mod:`deploytools.datamig.runner`, print the
result (a rich table for people, one JSON object with ``--json``) and map exceptions to the exit
codes of DESIGN §6 in :func:`exit_code_for`. Everything printed or logged goes through
:func:`deploytools.redact.redact`, migrations' own output included.

With ``--json`` stdout carries exactly one JSON object: while migrations run, file descriptor 1
points at stderr, so even a subprocess a migration starts cannot write to the real stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from deploytools.datamig.envfile import load_env_file
from deploytools.datamig.render import console_for, format_duration, render_status
from deploytools.exceptions import DeployToolsError, Interrupted, MigrationFailed, UsageError
from deploytools.redact import redact, url_passwords

PROG = "python -m deploytools.datamig"


def exit_code_for(error: BaseException) -> int:
    """The exit code of DESIGN §6 for an error: 2 bad files/config, 3 lock held, 1 otherwise."""
    if isinstance(error, DeployToolsError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return Interrupted.exit_code
    return 1


# --------------------------------------------------------------------------- arguments


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("the lock timeout cannot be negative")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
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
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for another runner (%(default)g)",
    )
    common.add_argument(
        "--dry-run", action="store_true", help="list what would run; run and write nothing"
    )
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run-once data migrations with a ledger and a runner lock."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", parents=[common], help="show every migration's state (read-only)")
    commands.add_parser("apply", parents=[common], help="apply the pending migrations")
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


class RedactingWriter(io.TextIOBase):
    """A text stream that masks passwords line by line before writing to ``target``."""

    def __init__(self, target: TextIO, redactor: Callable[[str], str]) -> None:
        self.target = target
        self.redactor = redactor
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            complete, _, self._pending = self._pending.rpartition("\n")
            self.target.write(self.redactor(complete + "\n"))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.target.write(self.redactor(self._pending))
            self._pending = ""
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()


@contextlib.contextmanager
def migration_output(json_mode: bool, redactor: Callable[[str], str]) -> Iterator[None]:
    """While migrations run: their stdout and stderr are redacted, and with ``--json`` their
    stdout (file descriptor 1 too) goes to stderr, keeping stdout for the JSON object."""
    real_stdout, real_stderr = sys.stdout, sys.stderr
    real_stdout.flush()
    saved_fd = None
    if json_mode:
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    sys.stdout = RedactingWriter(real_stderr if json_mode else real_stdout, redactor)
    sys.stderr = RedactingWriter(real_stderr, redactor)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = real_stdout, real_stderr
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


class RedactingFormatter(logging.Formatter):
    """Log lines in UTC, short logger names, passwords masked (tracebacks included)."""

    converter = time.gmtime

    def __init__(self, redactor: Callable[[str], str]) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(label)s %(message)s", "%H:%M:%SZ")
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        if name.startswith("deploytools.datamig.migrations."):
            record.label = f"[{name.rsplit('.', 1)[1]}]"
        elif name.startswith("deploytools"):
            record.label = "datamig:"
        else:
            record.label = f"{name}:"
        return self.redactor(super().format(record))


def configure_logging(redactor: Callable[[str], str]) -> logging.Handler:
    """Logs to stderr: INFO from the runner and migrations, WARNING from everything else."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("deploytools").setLevel(logging.INFO)
    return handler


def render_apply(result: Any, out: TextIO) -> None:
    console = console_for(out)
    if result.dry_run:
        if not result.would_apply:
            console.print("dry run: nothing to apply", markup=False)
        for migration in result.would_apply:
            console.print(f"would apply {migration.version} {migration.name}", markup=False)
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


# --------------------------------------------------------------------------- main


def _run(args: argparse.Namespace, secrets: list[str]) -> tuple[Any, bool]:
    """Run the command; returns (result, succeeded)."""
    from deploytools.datamig import runner

    if args.env_file:
        load_env_file(Path(args.env_file))
    secrets[:] = url_passwords(
        args.database_url, os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    )
    if args.command == "revert" and (args.version is None) == (args.release is None):
        raise UsageError("revert needs exactly one of VERSION or --release ID")
    settings = runner.Settings.from_environ(
        path=Path(args.path),
        root=Path(args.root) if args.root else None,
        database_url=args.database_url,
        release=(args.release or release_here()) if args.command == "apply" else None,
        lock_timeout=args.lock_timeout,
        dry_run=args.dry_run,
    )
    redactor = _redactor(secrets)
    if args.command == "status":
        return runner.status(settings), True
    with migration_output(args.json, redactor):
        if args.command == "apply":
            result = runner.apply(settings)
        else:
            result = runner.revert(
                settings,
                args.version,
                release=args.release,
                skip_irreversible=args.skip_irreversible,
            )
    return result, result.ok


def release_here() -> str | None:
    """The id in ``./.release.json``: run inside a deployed release, ``apply`` records it
    in the ledger without ``--release``."""
    try:
        return str(json.loads(Path(".release.json").read_text())["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _redactor(secrets: list[str]) -> Callable[[str], str]:
    return lambda text: redact(text, secrets)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    # Migrations and what they import come from the release: keep __pycache__ out of it.
    sys.dont_write_bytecode = True
    args = build_parser().parse_args(argv)
    secrets: list[str] = url_passwords(
        args.database_url, os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    )
    redactor = _redactor(secrets)
    configure_logging(redactor)
    try:
        result, ok = _run(args, secrets)
    except BaseException as error:
        if isinstance(error, SystemExit):
            raise
        if isinstance(error, DeployToolsError):
            message = str(error)
        elif isinstance(error, KeyboardInterrupt):
            message = "interrupted; the migration that was running was rolled back"
        else:
            logging.getLogger("deploytools.datamig").error(
                "unexpected error", exc_info=(type(error), error, error.__traceback__)
            )
            message = f"unexpected {type(error).__name__}: {error}"
        print(redactor(f"datamig: error: {message}"), file=sys.stderr)
        return exit_code_for(error)
    if args.json:
        print(redactor(json.dumps(result.to_json())), flush=True)
    else:
        renderer = {"status": render_status, "apply": render_apply, "revert": render_revert}
        out = RedactingWriter(sys.stdout, redactor)
        renderer[args.command](result, out)
        out.flush()
    return 0 if ok else MigrationFailed.exit_code


if __name__ == "__main__":
    sys.exit(main())
