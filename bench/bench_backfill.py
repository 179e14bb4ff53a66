"""A long backfill with ``ctx.batches``, against the two plain ways to write it.

Starts its own PostgreSQL (``tests/servers.py``), loads N rows into ``orders(id, amount,
total)`` and measures the same backfill (``total = amount * k``, a new ``k`` each round so every
round rewrites every row), each in a child process of its own:

- single: one ``UPDATE`` in one transaction (fast, but it holds every row lock to the end and
  loses everything on a failure or a kill);
- batches: keyset batches of SIZE rows, each committed in its own transaction, no checkpoint
  (the loop people write by hand: it cannot resume);
- runner: the migration applied by the runner with ``ctx.batches`` (each batch commits together
  with its checkpoint row; it resumes).

Then the runner is killed (SIGKILL of its process group, as a lost deploy would) once half the
rows are done, and run again: the total work (rows the migration's loop processed in both runs)
over N shows what a kill costs.

Figures are medians of ``--rounds`` rounds, with ratios against the baselines of the same run,
and the peak RSS of each child (``os.wait4``) above its RSS once imports were done; the runner
is also measured at N/10 rows, to show its memory does not grow with the row count.

Usage: python bench/bench_backfill.py [--rows 5000000] [--size 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from childlib import rss_kb, timed_apply  # noqa: E402

TARGET = 0.90  # the runner's throughput against hand-written batches without checkpoints
VERSION = "202401010000"
MIGRATION = '''"""Backfill orders.total = amount * BENCH_FACTOR (the migration of the bench)."""

import os
import pathlib
import time

import sqlalchemy as sa

orders = sa.table("orders", sa.column("id"), sa.column("amount"), sa.column("total"))


def run(ctx):
    factor, limit = int(os.environ["BENCH_FACTOR"]), int(os.environ["BENCH_LIMIT"])
    size, stop_at = int(os.environ["BENCH_SIZE"]), int(os.environ.get("BENCH_STOP_AT", "0"))
    work = os.open(os.environ["BENCH_WORK_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    marker = pathlib.Path(os.environ["BENCH_WORK_FILE"] + ".half")
    done = 0
    query = sa.select(orders.c.id).where(orders.c.id <= limit)
    for batch in ctx.batches(query, key=orders.c.id, size=size):
        ctx.db.execute(
            sa.update(orders)
            .where(orders.c.id.between(batch[0].id, batch[-1].id))
            .values(total=orders.c.amount * factor)
        )
        os.write(work, b"%d\\n" % len(batch))
        done += len(batch)
        if stop_at and done >= stop_at and not marker.exists():
            marker.touch()  # tells the bench to kill this runner now
            time.sleep(600)
'''


# --------------------------------------------------------------------------- children


def child_single(job: dict) -> dict:
    import sqlalchemy as sa

    baseline = rss_kb()
    engine = sa.create_engine(job["database_url"])
    start = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE orders SET total = amount * :k WHERE id <= :limit"),
            {"k": job["factor"], "limit": job["limit"]},
        )
    seconds = time.perf_counter() - start
    engine.dispose()
    return {"seconds": seconds, "baseline_kb": baseline}


def child_batches(job: dict) -> dict:
    """The hand-written loop: the same keyset queries and updates, a commit per batch."""
    import sqlalchemy as sa

    from deploytools.datamig import ledger

    orders = sa.table("orders", sa.column("id"), sa.column("amount"), sa.column("total"))
    baseline = rss_kb()
    database = ledger.ledger_database(job["database_url"], None)
    engine = ledger.create_engine(database)
    start = time.perf_counter()
    with engine.connect() as conn:
        query = sa.select(orders.c.id).where(orders.c.id <= job["limit"]).order_by(orders.c.id)
        last = None
        while True:
            page = query if last is None else query.where(orders.c.id > last)
            batch = conn.execute(page.limit(job["size"])).all()
            if not batch:
                break
            conn.execute(
                sa.update(orders)
                .where(orders.c.id.between(batch[0].id, batch[-1].id))
                .values(total=orders.c.amount * job["factor"])
            )
            conn.commit()
            last = batch[-1].id
    seconds = time.perf_counter() - start
    engine.dispose()
    return {"seconds": seconds, "baseline_kb": baseline}


def child_runner(job: dict) -> dict:
    from deploytools.datamig import runner

    return timed_apply(
        runner.Settings(path=Path(job["folder"]), database_url=job["database_url"], release="bench")
    )


CHILDREN = {"single": child_single, "batches": child_batches, "runner": child_runner}


# --------------------------------------------------------------------------- parent


class Bench:
    def __init__(self, database_url: str, folder: Path, work_file: Path, size: int) -> None:
        import sqlalchemy as sa

        self.database_url = database_url
        self.folder = folder
        self.work_file = work_file
        self.size = size
        self.engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
        self.factor = 1

    def env(self, limit: int, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
        env.update(
            BENCH_FACTOR=str(self.factor),
            BENCH_LIMIT=str(limit),
            BENCH_SIZE=str(self.size),
            BENCH_WORK_FILE=str(self.work_file),
            **extra,
        )
        return env

    def sql(self, statement: str, **params: object) -> list[tuple]:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            result = conn.execute(sa.text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []

    def next_round(self) -> None:
        """A new factor (every row changes), dead rows vacuumed, the ledger emptied."""
        self.factor += 1
        self.sql("VACUUM orders")
        for table in ("data_migrations", "data_migration_checkpoints", "data_migration_attempts"):
            self.sql(f"DELETE FROM {table}")
        self.work_file.unlink(missing_ok=True)
        Path(f"{self.work_file}.half").unlink(missing_ok=True)

    def check(self, limit: int) -> None:
        wrong = self.sql(
            "SELECT count(*) FROM orders WHERE id <= :limit AND total IS DISTINCT FROM amount * :k",
            limit=limit,
            k=self.factor,
        )[0][0]
        if wrong:
            raise SystemExit(f"{wrong} rows were not backfilled (factor {self.factor})")

    def measure(self, approach: str, limit: int) -> dict:
        """One approach in a child; its figures plus its peak RSS from ``wait4``."""
        self.next_round()
        job = {
            "database_url": self.database_url,
            "folder": str(self.folder),
            "factor": self.factor,
            "limit": limit,
            "size": self.size,
        }
        process = subprocess.Popen(
            [sys.executable, __file__, "--child", approach, json.dumps(job)],
            stdout=subprocess.PIPE,
            env=self.env(limit),
        )
        assert process.stdout is not None
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{approach} failed")
        self.check(limit)
        figures = json.loads(output)
        figures["peak_kb"] = usage.ru_maxrss
        return figures

    def kill_and_resume(self, rows: int) -> dict:
        """The runner killed at half the rows, then run again, both through the command line."""
        self.next_round()
        command = [
            sys.executable,
            "-m",
            "deploytools.datamig",
            "apply",
            "--json",
            "--path",
            str(self.folder),
            "--database-url",
            self.database_url,
        ]
        marker = Path(f"{self.work_file}.half")
        start = time.perf_counter()
        victim = subprocess.Popen(
            command,
            env=self.env(rows, BENCH_STOP_AT=str(rows // 2)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while not marker.exists():
            if victim.poll() is not None:
                raise SystemExit("the runner ended before half the rows were done")
            time.sleep(0.05)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        first_run = time.perf_counter() - start
        done_first = sum(int(n) for n in self.work_file.read_text().split())
        resumed = subprocess.run(command, env=self.env(rows), capture_output=True, text=True)
        if resumed.returncode != 0:
            raise SystemExit(f"the resumed run failed: {resumed.stderr[-2000:]}")
        seconds = time.perf_counter() - start
        self.check(rows)
        work = sum(int(n) for n in self.work_file.read_text().split())
        return {"work": work, "first": done_first, "seconds": seconds, "first_run": first_run}


def load_rows(bench: Bench, rows: int) -> None:
    """The orders table, and the ledger's tables (emptied between rounds)."""
    from deploytools.datamig import ledger

    with bench.engine.connect() as conn:
        ledger.create_tables(conn)
    bench.sql("CREATE TABLE orders (id BIGINT PRIMARY KEY, amount INTEGER NOT NULL, total INTEGER)")
    bench.sql(
        "INSERT INTO orders SELECT i, i % 1000 FROM generate_series(1, :n) AS i",
        n=rows,
    )
    bench.sql("VACUUM ANALYZE orders")


def write_migration(release: Path) -> Path:
    folder = release / "migrations"
    folder.mkdir(parents=True)
    (folder / f"{VERSION}_backfill_order_totals.py").write_text(MIGRATION)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="orders rows")
    parser.add_argument("--size", type=int, default=1000, help="rows per batch")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per approach")
    parser.add_argument("--child", nargs=2, metavar=("APPROACH", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        approach, job = args.child
        print(json.dumps(CHILDREN[approach](json.loads(job))))
        return

    import servers

    directory = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    directory.chmod(0o755)
    postgres = servers.start_postgres(directory / "postgres")
    try:
        database_url = postgres.create_database("bench_backfill")
        folder = write_migration(directory / "release")
        bench = Bench(database_url, folder, directory / "work", args.size)
        started = time.perf_counter()
        load_rows(bench, args.rows)
        print(f"loaded {args.rows:,} orders rows in {time.perf_counter() - started:.1f} s")
        results: dict[str, list[dict]] = {name: [] for name in CHILDREN}
        for _ in range(args.rounds):
            for approach in CHILDREN:  # interleaved, so a busy moment hits every approach
                results[approach].append(bench.measure(approach, args.rows))
        small = bench.measure("runner", max(args.rows // 10, 1))
        resumed = bench.kill_and_resume(args.rows)
        report(args, results, small, resumed)
    finally:
        postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


def report(args: argparse.Namespace, results: dict, small: dict, resumed: dict) -> None:
    def median(approach: str, key: str) -> float:
        return statistics.median(figures[key] for figures in results[approach])

    def growth_mb(figures: list[dict] | dict) -> float:
        items = figures if isinstance(figures, list) else [figures]
        return statistics.median((f["peak_kb"] - f["baseline_kb"]) / 1024 for f in items)

    labels = {
        "single": "single UPDATE, one transaction",
        "batches": "batches, own commit each, no checkpoint",
        "runner": "runner: ctx.batches + checkpoint",
    }
    print(
        f"\n{args.rows:,} rows, batches of {args.size:,}, median of {args.rounds} rounds, "
        f"{os.cpu_count()} cores"
    )
    header = f"{'approach':<42} {'seconds':>8} {'rows/s':>10} {'vs batches':>11} {'peak RSS':>10}"
    print(f"{header} {'over imports':>13}")
    baseline = args.rows / median("batches", "seconds")
    for approach, label in labels.items():
        rate = args.rows / median(approach, "seconds")
        peak = median(approach, "peak_kb") / 1024
        print(
            f"{label:<42} {median(approach, 'seconds'):8.2f} {rate:10,.0f} "
            f"{rate / baseline:10.2f}x {peak:7.1f} MB {growth_mb(results[approach]):+10.1f} MB"
        )
    ratio = (args.rows / median("runner", "seconds")) / baseline
    print(
        f"\nmemory: the runner grows {growth_mb(results['runner']):+.1f} MB over its imports at "
        f"{args.rows:,} rows, {growth_mb(small):+.1f} MB at {max(args.rows // 10, 1):,} rows"
    )
    print(
        f"kill at 50% then resume: {resumed['first']:,} rows done before the SIGKILL, "
        f"{resumed['work']:,} rows of work in all = {resumed['work'] / args.rows:.4f} x the rows "
        f"(target <= 1.01); {resumed['seconds']:.1f} s including the kill"
    )
    verdict = "ok" if ratio >= TARGET and resumed["work"] <= 1.01 * args.rows else "MISSED"
    print(
        f"the runner reaches {ratio:.0%} of the hand-written batches' throughput "
        f"(target >= {TARGET:.0%}): {verdict}"
    )


if __name__ == "__main__":
    main()
