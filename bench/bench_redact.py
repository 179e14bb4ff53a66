"""How long ``redact`` takes on big outputs (target: a 10 MB line in well under a second).

Times ``redact(text)`` and ``redact(text, secrets)`` (20 literal secrets, as many as a host's
env file might give) on:

- (a) one 10 MB line, (b) 10 MB of 100-character lines, (c) one 200 K-character line,

each made of log-like words with, every few KB, a URL with a password, a ``password=`` pair, a
SQLAlchemy ``[parameters: …]`` list and one of the secrets; then (a) and (c) again made only of
the text that made the old single regex backtrack (``a://b:`` repeated: each position rescanned
the rest of the line). Each figure is the median of ``--repeat`` runs, next to the median of
``text.replace(secret, "***")`` (one of the 20) over the same text in the same run, and their ratio.

Usage: python bench/bench_redact.py [--repeat 5] [--megabytes 10]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import string
import time
from collections.abc import Callable

from deploytools.redact import MASK, _literal_pieces, _mask_literals, redact

TARGET_SECONDS = 1.0
SECRETS = 20


def median_seconds(repeat: int, function: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def log_like(size: int, line_length: int | None, secrets: list[str], rng: random.Random) -> str:
    """``size`` characters of words, in lines of ``line_length`` (one line if None), with a
    secret-bearing item (never cut by a line break) about every 3 KB."""
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(500)]
    items = [
        "postgresql+psycopg://app:{s}@db.internal:5432/app",
        "redis://:{s}@cache:6379/0",
        "host=db user=app password={s} dbname=app",
        "[parameters: ('{s}', 42, None)]",
        "token {s} rejected",
    ]
    width = (line_length or size + 1) - 1  # each line ends with "\n"
    lines: list[str] = []
    line: list[str] = []
    used = length = 0
    while length < size:
        part = rng.choice(items).format(s=rng.choice(secrets))
        if rng.random() >= 0.002:
            part = rng.choice(words)
        if used + len(part) + 1 > width and line:
            lines.append(" ".join(line).ljust(width))
            length += width + 1
            line, used = [], 0
        line.append(part)
        used += len(part) + 1
    if line:
        lines.append(" ".join(line))
    return "\n".join(lines)[:size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--megabytes", type=float, default=10)
    args = parser.parse_args()

    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    secrets = ["".join(rng.choices(alphabet, k=16)) for _ in range(SECRETS)]
    size = int(args.megabytes * 1_000_000)
    backtracking = "a://b:"
    texts = {
        f"(a) one {args.megabytes:g} MB line": log_like(size, None, secrets, rng),
        f"(b) {args.megabytes:g} MB, 100-char lines": log_like(size, 100, secrets, rng),
        "(c) one 200 K line": log_like(200_000, None, secrets, rng),
        f"(a) one {args.megabytes:g} MB line, worst case": backtracking * (size // 6),
        "(c) one 200 K line, worst case": backtracking * (200_000 // 6),
    }

    print(f"Python str.replace of one literal is the baseline; median of {args.repeat} runs")
    header = f"{'text':38} {'secrets':>7} {'redact':>9} {'replace':>9} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name, text in texts.items():
        baseline = median_seconds(args.repeat, lambda text=text: text.replace(secrets[0], "***"))
        for given in ([], secrets):
            seconds = median_seconds(
                args.repeat, lambda text=text, given=given: redact(text, given)
            )
            verdict = "" if seconds < TARGET_SECONDS else "  SLOW"
            print(
                f"{name:38} {len(given):7d} {seconds * 1000:7.1f}ms {baseline * 1000:7.1f}ms"
                f" {seconds / baseline:5.0f}x{verdict}"
            )

    # The literal secrets: a substring search per secret and a replace for those that occur,
    # against the single regex alternation of all of them.
    one_line = texts[f"(a) one {args.megabytes:g} MB line"]
    alternation = re.compile("|".join(map(re.escape, sorted(secrets, key=len, reverse=True))))
    ours = median_seconds(
        args.repeat, lambda: _mask_literals(one_line, _literal_pieces(tuple(secrets)))
    )
    regex = median_seconds(args.repeat, lambda: alternation.sub(MASK, one_line))
    print(
        f"\n(a) {SECRETS} secrets alone: search + replace {ours * 1000:.1f}ms,"
        f" one regex alternation {regex * 1000:.1f}ms"
    )

    # What the runner does with a migration's output: one call per line.
    lines = texts[f"(b) {args.megabytes:g} MB, 100-char lines"].splitlines(keepends=True)
    seconds = median_seconds(args.repeat, lambda: [redact(line, secrets) for line in lines])
    print(f"(b) line by line, {len(lines)} calls with {SECRETS} secrets: {seconds * 1000:.1f}ms")


if __name__ == "__main__":
    main()
