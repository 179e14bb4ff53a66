"""The runner's tables for people: migration states like Flyway's ``info``.

Used by the runner's own command line and by ``invoke datamig.status``, which renders the
runner's JSON answer from a remote host with the same table. The table fits the terminal (80
columns included): version and state are never cut, the description wraps, and less important
columns are left out when there is no room for them (:data:`COLUMNS`, in order of importance).
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from typing import Any, TextIO

#: Width when the output is not a terminal and COLUMNS is not set (CI logs, pipes).
PIPE_WIDTH = 200


def console_for(file: TextIO) -> Any:
    """A rich Console on ``file``: the terminal's width, else COLUMNS, else :data:`PIPE_WIDTH`;
    colours only on a terminal."""
    from rich.console import Console

    width = None
    if not file.isatty():
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH
    return Console(file=file, highlight=False, width=width)


_STATE_STYLES = {
    "applied": "green",
    "pending": "yellow",
    "failed": "bold red",
    "changed": "magenta",
    "missing": "red",
    "running": "bold cyan",
    "interrupted": "bold red",
}
_LEGEND = {
    "running": "running: a runner is applying it now",
    "interrupted": "interrupted: its runner stopped without a result (killed); apply resumes it",
    "failed": "failed: its last attempt failed; apply runs it again",
    "changed": "changed: edited (or renamed) after it was applied; it will not run again",
    "missing": "missing: applied, but its file is not in this release",
}
OUT_OF_ORDER_MARK = "*"
NOT_HERE = "not in this release"


def format_duration(ms: int | None) -> str:
    if ms is None:
        return ""
    return f"{ms} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def format_progress(progress: Any) -> str:
    """``120,000 rows, ETA 25 s`` for the table's Progress column."""
    if progress is None:
        return ""
    text = f"{progress.rows_done:,} rows"
    if progress.eta_s is not None:
        text += f", ETA {format_seconds(progress.eta_s)}"
    return text


@dataclass(frozen=True)
class Column:
    """One column of the status table. ``flexible`` takes the room left (and wraps)."""

    header: str
    justify: str = "left"
    flexible: bool = False
    min_width: int = 0


#: In order of importance: on a narrow terminal the last ones are left out first.
COLUMNS = (
    Column("Version"),
    Column("State"),
    Column("Description", flexible=True, min_width=12),
    Column("Progress"),
    Column("Release"),
    Column("Applied at (UTC)"),
    Column("Phase"),
    Column("Duration", justify="right"),
)


def _cells(line: Any) -> dict[str, str]:
    description = line.name.replace("_", " ")
    if not line.in_release and line.state != "missing":
        description += f" ({NOT_HERE})"
    return {
        "Version": line.version + (OUT_OF_ORDER_MARK if line.out_of_order else ""),
        "State": line.state,
        "Description": description,
        "Progress": format_progress(line.progress),
        "Release": line.release or "",
        "Applied at (UTC)": line.applied_at.strftime("%Y-%m-%d %H:%M") if line.applied_at else "",
        "Phase": line.phase or "",
        "Duration": format_duration(line.duration_ms),
    }


def _layout(rows: list[dict[str, str]], width: int) -> list[tuple[Column, int]]:
    """The columns that fit in ``width`` (a heavy-head table: 3 characters per column plus 1),
    each with its width; columns empty in every row are left out too."""
    chosen = []
    for column in COLUMNS:
        content = max((len(row[column.header]) for row in rows), default=0)
        if content == 0 and column.header not in ("Version", "State", "Description"):
            continue
        chosen.append((column, max(content, len(column.header), column.min_width)))

    def needed(columns: list[tuple[Column, int]]) -> int:
        return (
            sum(column.min_width if column.flexible else size for column, size in columns)
            + 3 * len(columns)
            + 1
        )

    while needed(chosen) > width and len(chosen) > 3:
        chosen.pop()
    return chosen


#: rich lays a table out at roughly 2,500 rows a second; above this many rows ``status`` prints the
#: same columns, borders and colours as pre-aligned lines, so 5,000 migrations take well under 1 s.
RICH_TABLE_MAX_ROWS = 500


def _rich_table(console: Any, layout: list[tuple[Column, int]], rows: list[dict[str, str]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table()
    for column, size in layout:
        if column.flexible:
            table.add_column(column.header, overflow="fold", min_width=column.min_width, ratio=1)
        else:
            table.add_column(column.header, justify=column.justify, no_wrap=True, min_width=size)
    for row in rows:
        cells: list[Any] = [row[column.header] for column, _ in layout]
        cells[1] = Text(row["State"], style=_STATE_STYLES.get(row["State"], ""))
        table.add_row(*cells)
    console.print(table)


def _aligned_table(
    console: Any, layout: list[tuple[Column, int]], rows: list[dict[str, str]]
) -> None:
    """The look of rich's default table (heavy head, colours on a terminal), without its
    per-cell layout cost; a description too long for its column is cut with "…"."""
    from rich.color import ColorSystem
    from rich.style import Style

    colour = console.is_terminal and not console.no_color and console.color_system is not None
    styles = {state: Style.parse(style) for state, style in _STATE_STYLES.items()}
    fixed = sum(size for column, size in layout if not column.flexible) + 3 * len(layout) + 1
    widths = []
    for column, size in layout:
        if column.flexible:
            size = max(column.min_width, min(size, console.width - fixed))
        widths.append(size)

    def line(cells: list[str], edge: str, sep: str) -> str:
        parts = []
        for (column, _), cell, width in zip(layout, cells, widths, strict=True):
            if len(cell) > width:
                cell = cell[: width - 1] + "…"
            text = cell.rjust(width) if column.justify == "right" else cell.ljust(width)
            if colour and column.header == "State" and cell in styles:
                text = styles[cell].render(text, color_system=ColorSystem.STANDARD)
            parts.append(f" {text} ")
        return edge + sep.join(parts) + edge

    def rule(left: str, fill: str, joint: str, right: str) -> str:
        return left + joint.join(fill * (width + 2) for width in widths) + right

    out = [
        rule("┏", "━", "┳", "┓"),
        line([column.header for column, _ in layout], "┃", "┃"),
        rule("┡", "━", "╇", "┩"),
        *(line([row[column.header] for column, _ in layout], "│", "│") for row in rows),
        rule("└", "─", "┴", "┘"),
    ]
    console.file.write("\n".join(out) + "\n")


def _say(console: Any, text: str) -> None:
    """A line of text wrapped to the console's width, with no trailing spaces."""
    for line in textwrap.wrap(text, console.width, break_on_hyphens=False) or [""]:
        console.print(line, markup=False, soft_wrap=True)


def render_status(report: Any, out: TextIO) -> None:
    """The states as a table, like Flyway's ``info``: which ledger, one row per migration,
    a legend for what is not obvious, a summary, then errors and progress in full."""
    console = console_for(out)
    ledger = report.ledger or "?"
    ledger_id = getattr(report, "ledger_id", None)
    title = f"Data migrations in {ledger}" + (f" (ledger id {ledger_id})" if ledger_id else "")
    _say(console, title)
    rows = [_cells(line) for line in report.migrations]
    if rows:
        layout = _layout(rows, console.width)
        if len(rows) > RICH_TABLE_MAX_ROWS:
            _aligned_table(console, layout, rows)
        else:
            _rich_table(console, layout, rows)
    states = {line.state for line in report.migrations}
    legend = [text for state, text in _LEGEND.items() if state in states]
    if any(line.out_of_order for line in report.migrations):
        legend.append(f"{OUT_OF_ORDER_MARK} applied out of order (after a newer migration)")
    if legend:
        _say(console, "; ".join(legend))
    counts: dict[str, int] = {}
    for line in report.migrations:
        counts[line.state] = counts.get(line.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no migrations"
    _say(console, f"{summary}; {report.pending} to apply")
    for line in report.migrations:
        label = f"{line.version} {line.name}"
        if line.progress is not None:
            progress = line.progress
            eta = f", ETA {format_seconds(progress.eta_s)}" if progress.eta_s is not None else ""
            _say(
                console,
                f"{label} {line.state}: {progress.rows_done:,} rows done, last key "
                f"{progress.last_key}{eta}",
            )
        if line.error:
            where = [f"release {line.release}"] if line.release else []
            where += [] if line.in_release else [NOT_HERE]
            _say(
                console,
                f"{label} ({', '.join(where)}): {line.error}"
                if where
                else f"{label}: {line.error}",
            )
