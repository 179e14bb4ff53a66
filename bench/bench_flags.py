"""The flags migration against the naive approach, on the same data, in the same run.

Starts its own PostgreSQL and Redis (``tests/servers.py``), loads N rows into
``feature_flags(name, enabled)``, then measures, each in a child process of its own:

- the migration ``migrations/202002111319_migrate_flags_to_redis.py``, applied by the runner
  (rows streamed with a server-side cursor; per 1,000 flags one round trip carrying one HSET of
  1,000 fields and one EVALSHA that publishes the 1,000 flags);
- the naive approach: ``SELECT`` every row into a list, then one round trip per flag (its HSET
  and its PUBLISH).

For each: wall time of the work (interpreter start and imports excluded), rows per second, and
the child's peak RSS (``os.wait4``), next to its RSS once imports were done. Both must leave
Redis with exactly the N flags and publish each flag once on the ``feature_flags`` channel
(counted by the server; ``tests/test_flags_migration.py`` checks what a subscriber receives).

Usage: python bench/bench_flags.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIGRATIONS = REPO / "migrations"
sys.path.insert(0, str(REPO / "tests"))

from childlib import rss_kb, timed_apply  # noqa: E402

# --------------------------------------------------------------------------- children


def child_migration(database_url: str, redis_url: str) -> dict:
    import psycopg  # noqa: F401  (imported before the baseline, as the naive child does)
    import redis  # noqa: F401

    from deploytools.datamig import runner

    return timed_apply(
        runner.Settings(path=MIGRATIONS, database_url=database_url, redis_url=redis_url)
    )


def child_naive(database_url: str, redis_url: str) -> dict:
    import psycopg  # noqa: F401
    import redis
    import sqlalchemy as sa

    baseline = rss_kb()
    start = time.perf_counter()
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, enabled FROM feature_flags")).all()
    engine.dispose()
    client = redis.Redis.from_url(redis_url)
    for name, enabled in rows:
        value = "1" if enabled else "0"
        pipe = client.pipeline(transaction=False)
        pipe.hset("feature_flags", name, value)
        pipe.publish("feature_flags", f"{name}={value}")
        pipe.execute()
    client.close()
    return {"seconds": time.perf_counter() - start, "baseline_kb": baseline}


# --------------------------------------------------------------------------- parent


def measure(approach: str, database_url: str, redis_url: str) -> dict:
    """Run one approach in a child; its own figures plus its peak RSS from ``wait4``."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", approach, database_url, redis_url],
        stdout=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}},
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{approach} failed with exit code {process.returncode}")
    figures = json.loads(output)
    figures["peak_kb"] = usage.ru_maxrss  # KiB on Linux
    return figures


def load_rows(database_url: str, rows: int) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE feature_flags (name TEXT PRIMARY KEY, enabled BOOLEAN)"))
        conn.execute(
            sa.text(
                "INSERT INTO feature_flags SELECT 'feature_flag_' || lpad(i::text, 8, '0'), "
                "i % 3 = 0 FROM generate_series(1, :n) AS i"
            ),
            {"n": rows},
        )
        conn.execute(sa.text("ANALYZE feature_flags"))
    engine.dispose()


def check_redis(redis_url: str, rows: int) -> None:
    """The hash holds every flag, and every flag was published once (the server's own count of
    PUBLISH calls: a subscriber in this process would compete with the run for the CPU)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    published = client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
    client.config_resetstat()
    count = client.hlen("feature_flags")
    sample = client.hmget("feature_flags", ["feature_flag_00000003", "feature_flag_00000004"])
    client.flushdb()
    client.close()
    if count != rows or sample != [b"1", b"0"] or published != rows:
        raise SystemExit(
            f"Redis holds {count} flags (expected {rows}), sample {sample}, "
            f"{published} messages published"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="feature_flags rows")
    parser.add_argument(
        "--child", nargs=3, metavar=("APPROACH", "DB", "REDIS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        approach, database_url, redis_url = args.child
        function = child_migration if approach == "migration" else child_naive
        print(json.dumps(function(database_url, redis_url)))
        return

    import redis
    import servers

    directory = Path(tempfile.mkdtemp(prefix="bench-flags-"))
    directory.chmod(0o755)
    postgres = servers.start_postgres(directory / "postgres")
    redis_server = servers.start_redis(directory / "redis")
    try:
        database_url = postgres.create_database("bench_flags")
        redis_url = redis_server.url(0)
        started = time.perf_counter()
        load_rows(database_url, args.rows)
        print(f"loaded {args.rows:,} feature_flags rows in {time.perf_counter() - started:.1f} s")
        results = {}
        redis.Redis.from_url(redis_url).config_resetstat()
        for approach in ("migration", "naive"):
            results[approach] = measure(approach, database_url, redis_url)
            check_redis(redis_url, args.rows)

        header = f"{'approach':<46} {'seconds':>8} {'rows/s':>10} {'peak RSS':>11}"
        print(f"\n{header} {'after imports':>14}")
        labels = {
            "migration": "migration (stream, 1 round trip/1,000 flags)",
            "naive": "naive (load all rows, 1 round trip per flag)",
        }
        for approach, figures in results.items():
            rate = args.rows / figures["seconds"]
            print(
                f"{labels[approach]:<46} {figures['seconds']:8.2f} {rate:10,.0f} "
                f"{figures['peak_kb'] / 1024:8.1f} MB {figures['baseline_kb'] / 1024:11.1f} MB"
            )
        migration, naive = results["migration"], results["naive"]
        growth = {k: max(v["peak_kb"] - v["baseline_kb"], 1) for k, v in results.items()}
        print(
            f"\nthe migration is {naive['seconds'] / migration['seconds']:.1f}x faster and its "
            f"memory grows {growth['naive'] / growth['migration']:.1f}x less "
            f"(+{growth['migration'] / 1024:.1f} MB vs +{growth['naive'] / 1024:.1f} MB over the "
            f"RSS after imports; peak RSS ratio {naive['peak_kb'] / migration['peak_kb']:.1f}x)"
        )
    finally:
        redis_server.stop()
        postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
