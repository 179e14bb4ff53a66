"""What the benches' measured child processes share, kept light (imported before each
child's memory baseline is taken): the resident set size, and one timed ``runner.apply``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def rss_kb() -> int:
    """The current resident set size of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def timed_apply(settings: Any) -> dict[str, float]:
    """``runner.apply(settings)``, which must apply exactly one migration: its seconds, and
    the RSS (KiB) before it started."""
    from deploytools.datamig import runner

    baseline = rss_kb()
    start = time.perf_counter()
    result = runner.apply(settings)
    seconds = time.perf_counter() - start
    if not result.ok or len(result.applied) != 1:
        raise SystemExit(f"the migration did not apply: {result.to_json()}")
    return {"seconds": seconds, "baseline_kb": baseline}
