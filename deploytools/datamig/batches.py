"""``ctx.batches``: walk a large select in keyset order, committing each batch with a checkpoint.

A backfill of millions of rows cannot be one transaction (locks held for an hour, all of it
lost on a failure) and cannot restart from zero after a kill. So each batch is read with a
keyset query (``WHERE key > :last ORDER BY key LIMIT size``: every query starts where the last
one ended, at the same cost, with no cursor held across commits); when the migration asks for
the next batch, the previous batch's writes and a checkpoint row (last key, rows done) commit
together, then a new transaction begins on the same ``ctx.db``. A run that was killed or failed
resumes after the last committed batch. The migration is marked applied only by its final
transaction, after the last batch and the rest of ``run``.

Work outside the database (Redis) is not part of the transaction: after a kill, the batch that
was in progress runs again, so it must be idempotent.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from deploytools.datamig import ledger
from deploytools.datamig.interrupts import interrupts

if TYPE_CHECKING:
    from deploytools.datamig.context import MigrationConnection, MigrationContext

log = logging.getLogger("deploytools.datamig")

#: Seconds between two progress lines on stderr.
PROGRESS_EVERY = 1.0
# time.sleep, looked up here so that tests can see the pauses without waiting for them
_sleep = time.sleep
# Reads of a batch are plain fetches even if the migration set yield_per on ctx.db.
_READ_OPTIONS = {"stream_results": False, "yield_per": None}


class Walker:
    """What the runner gives ``ctx.batches`` for one migration run: its saved checkpoints and
    the commit of a batch together with its checkpoint."""

    def __init__(
        self,
        conn: MigrationConnection,
        *,
        version: str,
        name: str,
        release: str | None,
        saved: Sequence[ledger.Checkpoint] = (),
    ) -> None:
        self.conn = conn
        self.version = version
        self.name = name
        self.release = release
        self.saved = {checkpoint.walk: checkpoint for checkpoint in saved}
        self.walks = 0
        self.batches_committed = 0

    def next_walk(self) -> int:
        walk_number, self.walks = self.walks, self.walks + 1
        return walk_number

    def commit(self, checkpoint: ledger.Checkpoint) -> None:
        """Commit the batch's writes with its checkpoint, then begin the next transaction.
        A signal arriving meanwhile waits until both are done."""
        exists = checkpoint.walk in self.saved
        with interrupts.held(), self.conn.unguarded():
            ledger.save_checkpoint(self.conn, checkpoint, exists=exists)
            self.conn.commit()
            self.conn.begin()
        self.saved[checkpoint.walk] = checkpoint
        self.batches_committed += 1


def _key_columns(query: sa.Select[Any], key: Any) -> tuple[list[Any], list[int]]:
    """The key columns and their positions among the select's columns."""
    columns = list(key) if isinstance(key, tuple | list) else [key]
    if not columns:
        raise ValueError("ctx.batches: key needs at least one column")
    selected = list(query.selected_columns)
    positions = []
    for column in columns:
        index = next(
            (i for i, c in enumerate(selected) if c is column or c.compare(column)),
            None,
        )
        if index is None:
            raise ValueError(
                f"ctx.batches: the key {column} is not a column of the select; select it "
                "(e.g. select(t.c.id, ...)) and pass that column as key"
            )
        positions.append(index)
    return columns, positions


def _encode(value: Any) -> Any:
    """A key value as JSON (read back by :func:`_decode` with the column's type)."""
    if value is None:
        raise ValueError("ctx.batches: a key value is NULL; keys must be unique and not null")
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)  # Decimal, UUID, ...


def _decode(value: Any, column: Any) -> Any:
    try:
        python_type = column.type.python_type
    except (AttributeError, NotImplementedError):
        return value
    if isinstance(value, python_type):
        return value
    if python_type in (dt.datetime, dt.date, dt.time):
        return python_type.fromisoformat(value)
    if python_type is bytes:
        return bytes.fromhex(value)
    if python_type in (decimal.Decimal, uuid.UUID, int, float):
        return python_type(value)
    return value


def _after(columns: list[Any], last: tuple[Any, ...]) -> Any:
    """``key > last`` for one column, ``(k1, k2) > (v1, v2)`` for several."""
    values = [sa.literal(value, column.type) for value, column in zip(last, columns, strict=True)]
    if len(columns) == 1:
        return columns[0] > values[0]
    return sa.tuple_(*columns) > sa.tuple_(*values)


def _format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


def progress_line(
    label: str,
    rows_done: int,
    total: int | None,
    rate: float,
    eta_s: float | None,
    last_key: str,
) -> str:
    """``progress 2020..._backfill: 120,000 of 500,000 rows (24%), 15,300 rows/s, ETA 25 s,
    last key [120000]``: the stderr line a deploy shows while a batched migration runs."""
    text = f"progress {label}: {rows_done:,}"
    if total:
        text += f" of {total:,} rows ({min(rows_done / total, 1):.0%})"
    else:
        text += " rows"
    text += f", {rate:,.0f} rows/s"
    if eta_s is not None:
        text += f", ETA {_format_seconds(eta_s)}"
    return f"{text}, last key {last_key}"


def walk(
    ctx: MigrationContext,
    query: sa.Select[Any],
    *,
    key: Any,
    size: int = 1000,
    pause: float = 0,
    count: bool = True,
) -> Iterator[Sequence[Row[Any]]]:
    """The generator behind :meth:`MigrationContext.batches` (see there and the module doc)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"ctx.batches: size must be a whole number >= 1, not {size!r}")
    if not pause >= 0:
        raise ValueError(f"ctx.batches: pause must be >= 0 seconds, not {pause!r}")
    columns, positions = _key_columns(query, key)
    walker: Walker | None = ctx._walker
    walk_number = walker.next_walk() if walker else 0
    saved = walker.saved.get(walk_number) if walker else None
    label = f"{ctx.version}_{ctx.name}"
    last: tuple[Any, ...] | None = None
    rows_done, total = 0, None
    if saved is not None:
        values = json.loads(saved.last_key)
        last = tuple(_decode(v, c) for v, c in zip(values, columns, strict=True))
        rows_done, total = saved.rows_done, saved.rows_total
        log.info("%s: resuming after key %s (%d rows done)", label, saved.last_key, rows_done)
    elif count:
        counted = sa.select(sa.func.count()).select_from(query.order_by(None).subquery())
        total = ctx.db.execute(counted, execution_options=_READ_OPTIONS).scalar_one()
    page = query.order_by(None).order_by(*columns).limit(size)
    started, done_here, logged_at = time.monotonic(), 0, 0.0
    unlogged: str | None = None  # the latest progress line, when throttling held it back
    while True:
        rows = ctx.db.execute(
            page if last is None else page.where(_after(columns, last)),
            execution_options=_READ_OPTIONS,
        ).all()
        if not rows:
            if unlogged:
                log.info(unlogged)
            return
        yield rows
        # The migration asks for more: its work on these rows is done.
        last = tuple(rows[-1][i] for i in positions)
        last_key = json.dumps([_encode(v) for v in last])
        rows_done += len(rows)
        done_here += len(rows)
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = done_here / elapsed
        eta_s = max(total - rows_done, 0) / rate if total is not None and rate > 0 else None
        if walker is not None:
            walker.commit(
                ledger.Checkpoint(
                    version=ctx.version,
                    walk=walk_number,
                    name=ctx.name,
                    last_key=last_key,
                    rows_done=rows_done,
                    rows_total=total,
                    eta_s=eta_s,
                    updated_at=ledger.utcnow(),
                    release=ctx.release,
                )
            )
        full = len(rows) == size
        now = time.monotonic()
        unlogged = progress_line(label, rows_done, total, rate, eta_s, last_key)
        if now - logged_at >= PROGRESS_EVERY or not full:
            logged_at = now
            log.info(unlogged)
            unlogged = None
        if not full:
            return
        if pause:
            _sleep(pause)
