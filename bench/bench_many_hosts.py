"""A warm deploy to 1, 8, 32 and 100 sshd hosts: wall time, and what the client spends.

Starts 100 sshd hosts on 127.0.0.1… and 127.0.x.y (each with its own ``/srv`` and a clean login
user when run as root), and one worker process per fleet size. A worker sets up its hosts and
deploys once (cold, untimed), then, on each request, deploys a new commit (one changed file of
the 300-file, 5 MB application) in-process with ``deploytools.deploy.deploy`` and reports:

- wall time of the deploy;
- client CPU-seconds (``resource.getrusage``: the process, plus its finished children, git),
  in all and per host;
- peak RSS of the client during the deploy (``VmHWM``, reset before each deploy) and peak open
  file descriptors and threads (sampled every 5 ms by a thread whose own CPU is left out);
- the hosts' CPU-seconds (the sshd listeners' reaped children: sessions and the commands they
  ran) and the cores used, (client + hosts CPU) / wall: the sshd hosts and the client share the
  machine's cores, so at 32 and more hosts the wall time measures CPU saturation; the whole
  machine's busy cores (``/proc/stat``, other users included) beside.

Rounds are interleaved (one deploy per size, in a rotating order); per-host CPU at 32 and 100
hosts is given relative to 1 host as the median of the per-round ratios, with its IQR.

    python bench/bench_many_hosts.py [--rounds 15] [--sizes 1,8,32,100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import benchlib as bl

TARGET = 1.2  # CPU-seconds per host at 32 and 100 hosts, relative to 1 host


# -- the worker: one fleet size, deploys on request ------------------------------------------


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class Sampler(threading.Thread):
    """Peak open fds and threads of this process, every ``interval`` s, until stopped."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.interval = interval
        self.fds = self.threads = 0
        self.cpu = 0.0  # this thread's own CPU time: not the deploy's
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.fds = max(self.fds, len(os.listdir("/proc/self/fd")))
            self.threads = max(self.threads, threading.active_count())
            self._stop_event.wait(self.interval)
        self.cpu = time.thread_time()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> None:
    # "5" resets the high-water mark of the resident set to its current value (Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")


def worker(config_path: Path) -> None:
    from deploytools.admin import setup
    from deploytools.config import load_settings
    from deploytools.deploy import deploy
    from deploytools.output import Reporter

    settings = load_settings(json.loads(config_path.read_text()))
    quiet = Reporter(json_mode=True)
    setup(settings)
    deploy(settings, reporter=quiet)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "deploy":
            break
        _reset_peak_rss()
        sampler = Sampler()
        sampler.start()
        self_before = resource.getrusage(resource.RUSAGE_SELF)
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_before, total_before = _busy_jiffies()
        started = time.perf_counter()
        result = deploy(settings, reporter=quiet)
        wall = time.perf_counter() - started
        busy_after, total_after = _busy_jiffies()
        sampler.stop()
        self_after = resource.getrusage(resource.RUSAGE_SELF)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cores = len(os.sched_getaffinity(0))
        cpu_self = (
            self_after.ru_utime + self_after.ru_stime - self_before.ru_utime - self_before.ru_stime
        ) - sampler.cpu
        cpu_children = (
            children_after.ru_utime
            + children_after.ru_stime
            - children_before.ru_utime
            - children_before.ru_stime
        )
        answer = {
            "wall": wall,
            "cpu_self": cpu_self,
            "cpu_children": cpu_children,
            "peak_rss_kb": _peak_rss_kb(),
            "peak_fds": sampler.fds,
            "peak_threads": sampler.threads,
            "cores_busy": cores * (busy_after - busy_before) / max(1, total_after - total_before),
            "status": result.status,
            "phases": result.phases,
        }
        print(json.dumps(answer), flush=True)


# -- the parent: hosts, workers, rounds --------------------------------------------------------


class Worker:
    def __init__(self, size: int, config: Path) -> None:
        self.size = size
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the worker for {size} hosts did not start: {line!r}")

    def deploy(self) -> dict:
        self.process.stdin.write("deploy\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker for {self.size} hosts died")
        return json.loads(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(60)


def hosts_cpu(listeners: list[int]) -> float:
    """CPU-seconds the sshd hosts spent so far: each listener's own time and that of the
    sessions it reaped (which include the commands they ran, reaped in turn)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(bl.servers.process_tree(p) for p in listeners):
        time.sleep(0.01)  # the closed sessions are reaped (and so counted) just after
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in listeners:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / ticks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sizes", default="1,8,32,100")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker(options.worker)
        return 0
    sizes = [int(s) for s in options.sizes.split(",")]
    directory = bl.workdir("bench-many-")
    os.environ["HOME"] = str(directory / "home")  # the workers' too: no ~/.ssh of the user
    print(f"warm deploy to many hosts: {bl.machine()}")
    started = time.perf_counter()
    hosts = bl.start_hosts(directory, max(sizes))
    workers: dict[int, Worker] = {}
    try:
        repo = bl.make_app(directory / "app")
        print(
            f"  {max(sizes)} sshd hosts started in {time.perf_counter() - started:.1f} s "
            f"(login user {hosts.user}, {'own /srv each' if hosts.namespaced else 'own roots'})"
        )
        for size in sizes:
            name = f"many-{size}"
            config = directory / f"{name}.json"
            config.write_text(
                json.dumps(
                    {
                        "deploy": {
                            "hosts": hosts.entries(size, name),
                            "root": hosts.root(0, name),
                            "repo": str(repo.path),
                            "known_hosts": str(hosts.cluster.known_hosts),
                            "identity_file": str(hosts.cluster.client_key),
                            "connect_timeout": 60,
                        }
                    }
                )
            )
            print(f"  {size} hosts: setup and first deploy", file=sys.stderr)
            workers[size] = Worker(size, config)
        figures: dict[int, list[dict]] = {size: [] for size in sizes}
        for number in range(1, options.rounds + 1):
            for size in bl.rotate(sizes, number):
                repo.bump()
                listeners = [h.process.pid for h in hosts.hosts[:size]]
                before = hosts_cpu(listeners)
                answer = workers[size].deploy()
                answer["hosts_cpu"] = hosts_cpu(listeners) - before
                if answer["status"] != "succeeded":
                    raise RuntimeError(f"deploy to {size} hosts: {answer}")
                figures[size].append(answer)
            print(
                f"  round {number}: "
                + ", ".join(f"{s} hosts {figures[s][-1]['wall']:.2f} s" for s in sizes),
                file=sys.stderr,
            )
        report(sizes, figures)
    finally:
        for running in workers.values():
            running.stop()
        hosts.stop()
        bl.cleanup(directory)
    return 0


def report(sizes: list[int], figures: dict[int, list[dict]]) -> None:
    rounds = len(figures[sizes[0]])
    cores = len(os.sched_getaffinity(0))
    print(f"  {rounds} rounds, medians [IQR]; {cores} cores shared by the client and every sshd")
    print(
        "  client CPU: this process and its children (git); hosts CPU: the sshd listeners, their\n"
        "  sessions and commands; cores used: (client + hosts CPU) / wall; machine busy: every\n"
        "  process on the machine, other users' included"
    )
    header = (
        f"  {'hosts':>5}  {'wall s':22} {'client CPU s':22} {'CPU s per host':26} "
        f"{'hosts CPU s':22} {'cores used':18} {'machine busy':18} "
        f"{'peak RSS MB':12} {'peak fds':9} {'threads':7}"
    )
    print(header)

    def cpu(answer: dict) -> float:
        return answer["cpu_self"] + answer["cpu_children"]

    for size in sizes:
        rows = figures[size]
        print(
            f"  {size:>5}  {bl.spread([r['wall'] for r in rows]):22} "
            f"{bl.spread([cpu(r) for r in rows]):22} "
            f"{bl.spread([cpu(r) / size for r in rows], 's', 4):26} "
            f"{bl.spread([r['hosts_cpu'] for r in rows]):22} "
            f"{bl.spread([(cpu(r) + r['hosts_cpu']) / r['wall'] for r in rows], '', 2):18} "
            f"{bl.spread([r['cores_busy'] for r in rows], '', 2):18} "
            f"{max(r['peak_rss_kb'] for r in rows) / 1024:<12.0f} "
            f"{max(r['peak_fds'] for r in rows):<9} {max(r['peak_threads'] for r in rows):<7}"
        )
    if 1 in sizes:
        one = [cpu(r) for r in figures[1]]
        for size in sizes:
            if size == 1:
                continue
            per_host = [cpu(r) / size for r in figures[size]]
            q1, median, q3 = bl.paired(per_host, one)
            verdict = "met" if median <= TARGET else "NOT met"
            print(
                f"  CPU-seconds per host at {size} hosts / at 1 host: {median:.2f}x "
                f"[{q1:.2f}-{q3:.2f}]" + (f"; target ≤ {TARGET}x: {verdict}" if size >= 32 else "")
            )
    names = list(dict.fromkeys(n for size in sizes for r in figures[size] for n in r["phases"]))
    print("  phases, median s: " + ", ".join(names))
    for size in sizes:
        medians = [bl.quartiles([r["phases"].get(n, 0.0) for r in figures[size]])[1] for n in names]
        print(
            f"  {size:>5}  "
            + "  ".join(f"{n} {m:.3f}" for n, m in zip(names, medians, strict=True))
        )


if __name__ == "__main__":
    sys.exit(main())
