"""How long ``status`` takes with 5,000 migration files (target: under 1 s).

Builds a release with N migration files and an embedded SQLite ledger in which most of them are
applied (a few changed, one missing, the rest pending), then times ``status``:

- in-process: ``runner.status(settings)`` (discovery + checksums + ledger read), and the same
  plus rendering the table;
- as the deploy and people run it: ``python -m deploytools.datamig status --json`` and the
  human table, as subprocesses (interpreter start and imports included).

Usage: python bench/bench_status.py [--files 5000] [--applied 4000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from deploytools.datamig import ledger, runner
from deploytools.datamig.__main__ import render_status

TARGET_SECONDS = 1.0
BODY = '''"""Migration {n}: backfill part {n} of the data."""

from sqlalchemy import text


def run(ctx):
    ctx.db.execute(text("SELECT {n}"))
'''


def build(directory: Path, files: int, applied: int) -> runner.Settings:
    root, release = directory / "root", directory / "release"
    (root / "shared").mkdir(parents=True)
    folder = release / "migrations"
    folder.mkdir(parents=True)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    rows = []
    for n in range(files):
        version = (start + timedelta(minutes=n)).strftime("%Y%m%d%H%M%S")
        name = f"backfill_part_{n}"
        body = BODY.format(n=n).encode()
        (folder / f"{version}_{name}.py").write_bytes(body)
        if n < applied:
            checksum = hashlib.sha256(body).hexdigest()
            if n % 1000 == 7:
                checksum = "0" * 64  # shows as changed
            rows.append(
                {
                    "version": version,
                    "name": name,
                    "checksum": checksum,
                    "applied_at": start + timedelta(days=1, seconds=n),
                    "duration_ms": n % 97,
                    "release": f"20200102000000-{n // 500:07x}",
                    "host": "bench",
                    "applied_by": "bench",
                    "out_of_order": False,
                }
            )
    rows.append({**rows[0], "version": "201901010000", "name": "deleted_since"})  # missing
    settings = runner.Settings(path=folder, root=root)
    engine = ledger.create_engine(ledger.ledger_database(None, root))
    with engine.begin() as conn:
        ledger.create_tables(conn)
        conn.execute(sa.insert(ledger.data_migrations), rows)
    engine.dispose()
    return settings


def best_of(repeat: int, function) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--applied", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("deploytools").setLevel(logging.ERROR)  # its warnings, once per call

    directory = Path(tempfile.mkdtemp(prefix="bench-status-"))
    try:
        settings = build(directory, args.files, min(args.applied, args.files))
        report = runner.status(settings)
        counts: dict[str, int] = {}
        for line in report.migrations:
            counts[line.state] = counts.get(line.state, 0) + 1
        print(f"{args.files} migration files, SQLite ledger; states: {counts}")

        def status_and_table() -> None:
            render_status(runner.status(settings), io.StringIO())

        cli = [sys.executable, "-m", "deploytools.datamig", "status", "--root", str(settings.root)]
        cwd = settings.path.parent
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}

        def run_cli(*extra: str) -> None:
            subprocess.run([*cli, *extra], cwd=cwd, env=env, check=True, capture_output=True)

        measurements = [
            ("in-process runner.status()", best_of(args.repeat, lambda: runner.status(settings))),
            ("in-process status + table", best_of(args.repeat, status_and_table)),
            ("CLI `status --json` (subprocess)", best_of(args.repeat, lambda: run_cli("--json"))),
            ("CLI `status` table (subprocess)", best_of(args.repeat, run_cli)),
        ]
        width = max(len(name) for name, _ in measurements)
        print(f"{'':{width}}   best      median   (target < {TARGET_SECONDS:g} s)")
        for name, (best, median) in measurements:
            verdict = "ok" if median < TARGET_SECONDS else "SLOW"
            print(f"{name:{width}}   {best:6.3f} s  {median:6.3f} s  {verdict}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
