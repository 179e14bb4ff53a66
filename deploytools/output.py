"""What people and CI see: phases, live output from the hosts, upload progress, result tables,
or one JSON object.

Human output uses rich (colours only on a terminal, NO_COLOR respected). Lines from the hosts
(migration logs and progress, hook and installer output) are printed as they arrive, each
prefixed with its host, on a terminal and in a CI log alike. With ``--json`` stdout carries
exactly one JSON object and nothing else; everything else goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from .redact import redact

SECRET_LINE = "\x1esecret\t"  # how lib.sh's announce_secret marks a value to mask


class Reporter:
    """Progress and results of one command, for a person (``json_mode=False``) or CI."""

    def __init__(self, json_mode: bool = False, console: Console | None = None) -> None:
        self.json_mode = json_mode
        self.console = console or Console(stderr=json_mode, highlight=False, soft_wrap=True)
        self.errors = Console(stderr=True, highlight=False, soft_wrap=True)
        self.secrets: set[str] = set()  # values the hosts said to mask (shared/.env secrets)

    def mask(self, text: str) -> str:
        """``text`` with every known secret masked (URL passwords always)."""
        return redact(text, self.secrets)

    def strip_secrets(self, output: str) -> str:
        """A host's output, its secret announcements taken out and every secret masked."""
        kept = [line for line in output.splitlines() if not self._announced(line)]
        return self.mask("\n".join(kept))

    def _announced(self, line: str) -> bool:
        if not line.startswith(SECRET_LINE):
            return False
        value = line[len(SECRET_LINE) :].rstrip("\n")
        if value:
            self.secrets.add(value)
        return True

    # -- progress ----------------------------------------------------------------------------

    def phase(self, name: str, detail: str = "") -> None:
        if not self.json_mode:
            detail = escape(self.mask(detail))
            self.console.print(f"[bold cyan]→ {escape(name)}[/] {detail}".rstrip())

    def note(self, message: str) -> None:
        if not self.json_mode:
            self.console.print(escape(self.mask(message)))

    def warn(self, message: str) -> None:
        self.errors.print(f"[yellow]warning:[/] {escape(self.mask(message))}")

    def stream(self, host: str, line: str) -> None:
        """One line of a host's live output (thread-safe: rich's console holds a lock). A
        host announces the secrets of its ``shared/.env`` on lines of their own, before any
        output that could show them: those lines are kept, never shown."""
        if self._announced(line):
            return
        console = self.errors if self.json_mode else self.console
        console.print(f"[dim]{escape(host)} |[/] {escape(self.mask(line.rstrip()))}")

    @contextlib.contextmanager
    def upload(self, hosts: list[str]) -> Iterator[Callable[[str], Callable[[int, int], None]]]:
        """Yields ``for_host(name) -> callback(sent, total)`` driving one bar per host."""
        if self.json_mode or not self.console.is_terminal:
            yield lambda host: lambda sent, size: None
            return
        with Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=self.console,
            transient=False,
        ) as progress:
            tasks = {host: progress.add_task(escape(host), total=None) for host in hosts}

            def for_host(host: str) -> Callable[[int, int], None]:
                return lambda sent, size: progress.update(tasks[host], completed=sent, total=size)

            yield for_host

    # -- results -----------------------------------------------------------------------------

    def emit_json(self, data: dict[str, Any]) -> None:
        """The one JSON object of a ``--json`` command, on stdout."""
        sys.stdout.write(self.mask(json.dumps(data, indent=2, default=str)) + "\n")
        sys.stdout.flush()

    def table(
        self, title: str, columns: list[str], rows: list[list[Any]], caption: str | None = None
    ) -> None:
        table = Table(
            title=title.strip(),
            title_justify="left",
            header_style="bold",
            caption=caption,
            caption_justify="left",
        )
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*("" if cell is None else escape(self.mask(str(cell))) for cell in row))
        self.console.print(table)

    def error(self, message: str) -> None:
        self.errors.print(f"[bold red]error:[/] {escape(self.mask(message))}")
