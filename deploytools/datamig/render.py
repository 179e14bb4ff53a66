"""The runner's tables for people: migration states like Flyway's ``info``.

Used by the runner's own command line and by ``invoke datamig.status``, which renders the
runner's JSON answer from a remote host with the same table.
"""

from __future__ import annotations

from typing import Any, TextIO


def console_for(file: TextIO) -> Any:
    from rich.console import Console

    # Not a terminal (CI logs, pipes): no colours, and wide enough not to wrap the table.
    return Console(file=file, highlight=False, width=None if file.isatty() else 200)


_STATE_STYLES = {
    "applied": "green",
    "pending": "yellow",
    "failed": "bold red",
    "changed": "magenta",
    "missing": "red",
}


def format_duration(ms: int | None) -> str:
    if ms is None:
        return ""
    return f"{ms} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


#: rich lays a table out at roughly 2,500 rows a second; above this many rows ``status`` prints the
#: same columns, borders and colours as pre-aligned lines, so 5,000 migrations take well under 1 s.
RICH_TABLE_MAX_ROWS = 500
_COLUMNS = (
    ("Version", "left"),
    ("Description", "left"),
    ("State", "left"),
    ("Applied at (UTC)", "left"),
    ("Duration", "right"),
    ("Release", "left"),
    ("Out of order", "left"),
)
_STATE_COLUMN = 2


def _status_rows(report: Any) -> list[tuple[str, ...]]:
    return [
        (
            line.version,
            line.name.replace("_", " "),
            line.state,
            line.applied_at.strftime("%Y-%m-%d %H:%M:%S") if line.applied_at else "",
            format_duration(line.duration_ms),
            line.release or "",
            "yes" if line.out_of_order else "",
        )
        for line in report.migrations
    ]


def _rich_table(console: Any, title: str, rows: list[tuple[str, ...]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for column, justify in _COLUMNS:
        table.add_column(column, justify=justify, no_wrap=column != "Description")
    for row in rows:
        cells: list[Any] = list(row)
        cells[_STATE_COLUMN] = Text(row[_STATE_COLUMN], style=_STATE_STYLES.get(row[2], ""))
        table.add_row(*cells)
    console.print(table)


def _aligned_table(console: Any, title: str, rows: list[tuple[str, ...]]) -> None:
    """The look of rich's default table (heavy head, colours on a terminal), without its
    per-cell layout cost. No wrapping: a narrow terminal wraps the long lines itself."""
    from rich.color import ColorSystem
    from rich.style import Style

    colour = console.is_terminal and not console.no_color and console.color_system is not None
    styles = {state: Style.parse(style) for state, style in _STATE_STYLES.items()}
    widths = [len(name) for name, _ in _COLUMNS]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: tuple[str, ...], edge: str, sep: str) -> str:
        parts = []
        for index, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            text = cell.rjust(width) if _COLUMNS[index][1] == "right" else cell.ljust(width)
            if colour and index == _STATE_COLUMN and cell in styles:
                text = styles[cell].render(text, color_system=ColorSystem.STANDARD)
            parts.append(f" {text} ")
        return edge + sep.join(parts) + edge

    def rule(left: str, fill: str, joint: str, right: str) -> str:
        return left + joint.join(fill * (width + 2) for width in widths) + right

    out = [
        title,
        rule("┏", "━", "┳", "┓"),
        line(tuple(name for name, _ in _COLUMNS), "┃", "┃"),
        rule("┡", "━", "╇", "┩"),
        *(line(row, "│", "│") for row in rows),
        rule("└", "─", "┴", "┘"),
    ]
    console.file.write("\n".join(out) + "\n")


def render_status(report: Any, out: TextIO) -> None:
    """The states as a table, like Flyway's ``info``, then a summary and the errors."""
    console = console_for(out)
    rows = _status_rows(report)
    title = f"Data migrations ({report.ledger})"
    if len(rows) > RICH_TABLE_MAX_ROWS:
        _aligned_table(console, title, rows)
    elif rows:
        _rich_table(console, title, rows)
    counts: dict[str, int] = {}
    for line in report.migrations:
        counts[line.state] = counts.get(line.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no migrations"
    console.print(f"{summary}; {report.pending} to apply", markup=False)
    for line in report.migrations:
        if line.error:
            console.print(f"{line.version} {line.name} failed: {line.error}", markup=False)
