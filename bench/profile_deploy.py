"""Where the milliseconds of a warm 1-host deploy go, with and without one pending migration.

One sshd host on loopback (its own ``/srv``, a clean login user, when run as root), the
300-file, 5 MB application, and ``deploy.python`` a Python on the host that imports this
checkout. Measures, in the same run:

1. ``invoke deploy --json`` as a user runs it, interleaved with and without a pending no-op
   migration (``--rounds``): wall time, the phases, and what lies outside them;
2. the client's start-up: ``python -c pass``, ``import deploytools.tasks`` and
   ``python -X importtime -m invoke … deploy``: the slowest top-level imports;
3. ``cProfile`` of ``deploytools.deploy.deploy`` in-process (no start-up): the functions
   with the most cumulative and own time;
4. a timeline of every remote command, upload and connect of one deploy, measured on the
   client (the transport's methods wrapped by this script), with the time each command spent
   in the host's shell (a login shell wrapper logs when bash starts and ends);
5. the host side: the programs each deploy runs there (``strace -f -e trace=execve`` on the
   host's sshd, one deploy each, not timed), and the runner's start-up: ``python -c pass``,
   ``import deploytools.datamig.runner`` and ``datamig check --json`` run in the release as
   the login user, with ``-X importtime``'s slowest imports;
6. the floor: an SSH connection, one exec of ``true``, one exec of a script carrying the
   shell functions of the upload phase's command, and of the whole library; the same parsed
   by ``sh`` locally;
7. what-ifs: changes patched into the client in this process (TCP_QUICKACK taken out again,
   to see what it buys; the shell functions kept on the host instead of sent with each
   command), a warm deploy and a rollback each, interleaved with the code as it is;
8. what-ifs on the command line (``whatif_cli.py``: start-up included): the SSH transports
   made on the main thread before the build, as before the connecting threads made them (what
   making them there buys).

    python bench/profile_deploy.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import benchlib as bl

from deploytools.layout import library_for

NAME = "profile"
RUNNER = "deploytools.datamig.runner"


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


def timed_runs(argv: list[str], count: int, **kwargs) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, **kwargs)
        times.append(time.perf_counter() - started)
    return times


def top_imports(stderr: str, count: int = 12) -> tuple[float, list[tuple[float, str]]]:
    """From ``-X importtime`` output: the total, and the slowest top-level imports (their
    cumulative time, so each counts what it pulled in)."""
    rows = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(3)) == 1:  # one space: a top-level import
            rows.append((int(match.group(2)) / 1e6, match.group(4)))
    rows.sort(reverse=True)
    return sum(seconds for seconds, _ in rows), rows[:count]


# -- the timeline of one deploy ---------------------------------------------------------------


class Timeline:
    """Wraps the SSH transport's connect, run_script and put to log when each ran."""

    def __init__(self) -> None:
        self.events: list[tuple[float, float, str]] = []
        self.origin = 0.0

    def install(self) -> None:
        from deploytools.hosts import ssh

        timeline = self

        def label(script: str) -> str:
            """The functions the script calls (the lines after ``root=…``), and its size."""
            lines = script.splitlines()
            start = max(i for i, line in enumerate(lines) if line.startswith("root="))
            calls = [line.split()[0] for line in lines[start + 1 :] if line]
            return f"{'+'.join(calls)} ({len(script.encode()):,} B)"

        def wrap(cls, name, describe):
            original = getattr(cls, name)

            def wrapper(self, *args, **kwargs):
                started = time.perf_counter()
                try:
                    return original(self, *args, **kwargs)
                finally:
                    ended = time.perf_counter()
                    timeline.events.append((started, ended, describe(*args)))

            setattr(cls, name, wrapper)

        from deploytools import runner_client

        wrap(ssh.DeployConnection, "open", lambda *a: "connect (TCP, SSH handshake, auth)")
        # the migration runner's session: its exec request is the run_datamig command
        wrap(runner_client.Session, "check", lambda *a: "runner session: wait for check")
        wrap(runner_client.Session, "apply", lambda phase: f"runner session: apply {phase}")
        wrap(runner_client.Session, "close", lambda *a: "runner session: close, runner exits")
        wrap(ssh.SSHTransport, "run_script", lambda script, *a: "exec " + label(script))
        wrap(ssh.SSHTransport, "put", lambda local, remote, *a: f"sftp put {Path(remote).name}")

    def show(self, title: str, wall: float, inside: list[float]) -> None:
        """The events, with the time each exec spent in the host's shell (``inside``, in
        order) when known."""
        print(f"  {title}: {wall * 1000:.0f} ms in deploy(); remote work as the client saw it")
        print("    start     round trip  on the host  what")
        left = list(inside)
        for started, ended, what in sorted(self.events):
            host = f"{left.pop(0) * 1000:6.1f} ms" if what.startswith("exec") and left else " " * 9
            print(
                f"    +{(started - self.origin) * 1000:6.1f} ms  {(ended - started) * 1000:6.1f} ms"
                f"  {host}   {what}"
            )
        remote = covered([(started, ended) for started, ended, _ in self.events])
        print(
            f"    waiting on the host {remote * 1000:.0f} ms (overlaps counted once); the "
            f"rest (local work) {(wall - remote) * 1000:.0f} ms"
        )
        self.events.clear()


def covered(spans: list[tuple[float, float]]) -> float:
    """The time covered by at least one of ``spans``."""
    total, reach = 0.0, float("-inf")
    for started, ended in sorted(spans):
        if ended > reach:
            total += ended - max(started, reach)
            reach = ended
    return total


class HostClock:
    """How long each exec request runs inside the host: while ``timing()``, the login user's
    shell is a wrapper that logs when bash starts and ends (``date +%s%N``, ~1 ms each)."""

    def __init__(self, directory: Path, user: str) -> None:
        self.user = user
        self.log = directory / "host-times.log"
        self.wrapper = directory / "timing-shell"
        self.wrapper.write_text(
            "#!/bin/sh\nstart=$(date +%s%N)\n"
            f'{bl.LOGIN_SHELL} "$@"\nstatus=$?\n'
            f'printf "%s %s\\n" "$start" "$(date +%s%N)" >> {self.log}\nexit $status\n'
        )
        self.wrapper.chmod(0o755)

    @property
    def available(self) -> bool:
        return bl.is_root() and self.user != "root"

    def timing(self, action) -> list[float]:
        """Run ``action``; the seconds each exec request spent in the host's shell."""
        if not self.available:
            action()
            return []
        self.log.write_text("")
        self.log.chmod(0o666)
        bl.set_login_shell(self.user, str(self.wrapper))
        try:
            action()
        finally:
            bl.set_login_shell(self.user, bl.LOGIN_SHELL)
        # in the order the commands started, as the client's events are shown
        spans = sorted(tuple(map(int, line.split())) for line in self.log.read_text().splitlines())
        return [(end - start) / 1e9 for start, end in spans]


def profile_all_threads(action) -> tuple[pstats.Stats, float]:
    """cProfile of ``action`` in this thread and in every thread started meanwhile (cProfile
    alone sees only the thread that enabled it; a deploy works in its host threads)."""
    profiles: list[cProfile.Profile] = []
    original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def bootstrap(thread: threading.Thread) -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            original(thread)
        finally:
            profile.disable()
            profiles.append(profile)

    threading.Thread._bootstrap_inner = bootstrap  # type: ignore[attr-defined]
    main = cProfile.Profile()
    started = time.perf_counter()
    try:
        main.runcall(action)
    finally:
        wall = time.perf_counter() - started
        threading.Thread._bootstrap_inner = original  # type: ignore[attr-defined]
    time.sleep(0.2)  # threads that end with the deploy finish their bookkeeping
    stats = pstats.Stats(main)
    for profile in list(profiles):
        stats.add(profile)
    return stats, wall


# -- the host side ----------------------------------------------------------------------------


def trace_host(host, deploy) -> Counter:
    """The programs run on the host (execve, by name) while ``deploy()`` runs."""
    with tempfile.NamedTemporaryFile(prefix="bench-strace-", suffix=".txt", delete=False) as f:
        output = Path(f.name)
    tracer = subprocess.Popen(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=execve",
            "-o",
            str(output),
            "-p",
            str(host.process.pid),
        ],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # strace attaches
    try:
        deploy()
    finally:
        time.sleep(0.3)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    programs: Counter = Counter()
    for line in output.read_text(errors="replace").splitlines():
        match = re.search(r'execve\("([^"]+)"', line)
        if match and "= 0" in line:
            programs[Path(match.group(1)).name] += 1
    output.unlink()
    return programs


def as_login_user(user: str, argv: list[str]) -> list[str]:
    return argv if user == "root" or not bl.is_root() else ["runuser", "-u", user, "--", *argv]


# -- the floor: SSH itself ------------------------------------------------------------------------

# the functions layout.unpack_script calls: the upload phase's command
UPLOAD_FUNCTIONS = (
    "need_root",
    "hold_lock",
    "begin_release",
    "unpack",
    "verify_release",
    "finish_unpack",
    "publish",
)


def floor_libraries() -> dict[str, str]:
    """The shell functions the upload phase's command carries, and the whole library."""
    return {"upload": library_for(UPLOAD_FUNCTIONS), "library": library_for(())}


def ssh_floor(hosts: bl.BenchHosts, count: int) -> dict[str, list[float]]:
    """Connect, and exec round trips: the first on a connection (right after the connect,
    with and without TCP_QUICKACK, and after a pause), later ones, and ones carrying shell
    functions (``UPLOAD_FUNCTIONS`` and the whole library), defined and not called."""
    import paramiko

    from deploytools.hosts.ssh import MeteredSocket  # sets TCP_QUICKACK after every read

    host = hosts.hosts[0]
    figures: dict[str, list[float]] = {
        name: []
        for name in ("connect", "first", "first-quickack", "paused", "true", "upload", "library")
    }
    scripts = {name: text + "root=/srv\ntrue\n" for name, text in floor_libraries().items()}

    def connect(quickack: bool = False) -> paramiko.SSHClient:
        sock = socket.create_connection((host.address, host.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if quickack:
            sock = MeteredSocket(sock)
        client = paramiko.SSHClient()
        client.load_host_keys(str(hosts.cluster.known_hosts))
        client.connect(
            host.address,
            host.port,
            username=hosts.user,
            key_filename=str(hosts.cluster.client_key),
            sock=sock,
            look_for_keys=False,
            allow_agent=False,
        )
        return client

    def exec_(client: paramiko.SSHClient, command: str) -> float:
        started = time.perf_counter()
        _, stdout, _ = client.exec_command(command)
        stdout.channel.recv_exit_status()
        return time.perf_counter() - started

    for _ in range(count):
        started = time.perf_counter()
        client = connect()
        figures["connect"].append(time.perf_counter() - started)
        figures["first"].append(exec_(client, "true"))
        figures["true"].append(exec_(client, "true"))
        for name, script in scripts.items():
            figures[name].append(exec_(client, "sh -c " + shlex.quote(script)))
        client.close()
        client = connect(quickack=True)
        figures["first-quickack"].append(exec_(client, "true"))
        client.close()
        client = connect()
        time.sleep(0.1)
        figures["paused"].append(exec_(client, "true"))
        client.close()
    return figures


# -- what-ifs: candidate changes, measured by patching the client in this process ------------


@contextlib.contextmanager
def no_quickack():
    """The client as it was before TCP_QUICKACK: the first command after a connect waits
    ~40 ms for the client's delayed ACK behind the server's Nagle."""
    from deploytools.hosts import ssh

    original = ssh.MeteredSocket.__init__

    def init(self, inner) -> None:
        original(self, inner)
        self._quickack = False

    ssh.MeteredSocket.__init__ = init
    try:
        yield
    finally:
        ssh.MeteredSocket.__init__ = original


@contextlib.contextmanager
def library_on_host(local: Path, remote: str, user: str):
    """The whole shell library kept on the host (here written straight to its disk) and
    sourced, instead of the functions each command uses sent with it."""
    from deploytools import layout

    local.write_text(layout.library_for(()))
    if bl.is_root():
        bl.give(local, user)
    original = layout.library_for
    layout.library_for = lambda names: f". {shlex.quote(remote)}\n"
    try:
        yield
    finally:
        layout.library_for = original


def what_ifs(kind: Condition, hosts: bl.BenchHosts, rounds: int) -> None:
    """Warm deploy then rollback, interleaved over the variants; in-process (no start-up)."""
    from deploytools.deploy import deploy
    from deploytools.output import Reporter
    from deploytools.rollback import rollback

    quiet = Reporter(json_mode=True)
    root = f"{NAME}-plain"
    variants = {
        "as is": contextlib.nullcontext,
        "without TCP_QUICKACK": no_quickack,
        "shell library kept on the host": lambda: library_on_host(
            hosts.local(0, root) / ".bench-lib.sh",
            hosts.root(0, root) + "/.bench-lib.sh",
            hosts.user,
        ),
    }
    figures = {name: {"deploy": [], "rollback": [], "bytes": []} for name in variants}
    for number in range(rounds + 1):
        for name in bl.rotate(list(variants), number):
            with variants[name]():
                kind.step()
                started = time.perf_counter()
                result = deploy(kind.settings, reporter=quiet)
                deployed = time.perf_counter() - started
                started = time.perf_counter()
                rollback(kind.settings, reporter=quiet)
                rolled = time.perf_counter() - started
            if number:  # the first round warms up
                figures[name]["deploy"].append(deployed)
                figures[name]["rollback"].append(rolled)
                figures[name]["bytes"].append(result.hosts[0]["bytes_sent"])
    base = figures["as is"]
    for name, values in figures.items():
        line = (
            f"  {name:32} deploy {bl.spread(values['deploy'])}, rollback "
            f"{bl.spread(values['rollback'])}, {statistics.median(values['bytes']):,.0f} B sent"
        )
        if name != "as is":
            line += (
                f"; ÷ as is: deploy {bl.ratio_text(values['deploy'], base['deploy'])}, "
                f"rollback {bl.ratio_text(values['rollback'], base['rollback'])}"
            )
        print(line)


def cli_what_ifs(kind: Condition, rounds: int) -> None:
    """``invoke deploy --json`` through ``whatif_cli.py``, interleaved over its variants."""
    script = str(bl.BENCH / "whatif_cli.py")
    variants = {
        "as is": "as-is",
        "SSH transports made on the main thread (before)": "ssh-on-main-thread",
    }
    figures: dict[str, list[bl.Timed]] = {name: [] for name in variants}
    for number in range(rounds + 1):
        for name in bl.rotate(list(variants), number):
            kind.step()
            timed = kind.cli.run(kind.config, "deploy", "--json", entry=(script, variants[name]))
            if number:  # the first round warms up
                figures[name].append(timed)
    base = [t.seconds for t in figures["as is"]]
    for name, runs in figures.items():
        seconds = [t.seconds for t in runs]
        build = [t.data["phases"]["build"] for t in runs]
        line = f"  {name:46} {bl.spread(seconds)}, build phase {bl.spread(build)}"
        if name != "as is":
            line += f"; ÷ as is {bl.ratio_text(seconds, base)}"
        print(line)


# -- main -------------------------------------------------------------------------------------


class Condition:
    """One kind of warm deploy: its application, roots, config, and how to make a commit."""

    def __init__(self, title: str, cli: bl.DeployToolsCLI, config: Path, settings, step) -> None:
        self.title = title
        self.cli = cli
        self.config = config
        self.settings = settings
        self.step = step  # makes the next commit

    def run_cli(self) -> bl.Timed:
        self.step()
        return self.cli.run(self.config, "deploy", "--json")


def conditions(hosts: bl.BenchHosts, directory: Path, python: Path) -> list[Condition]:
    """No migrations at all; migrations, none pending; one pending no-op migration."""
    from deploytools.config import load_settings

    found = []
    counter = iter(range(1, 10**6))
    for name, migrations in (("plain", False), ("migrations", True)):
        repo = bl.make_app(directory / name)
        cli = bl.DeployToolsCLI(repo, directory, name)
        deploy_config = {
            "hosts": hosts.entries(1, f"{NAME}-{name}"),
            "root": hosts.root(0, f"{NAME}-{name}"),
            "known_hosts": str(hosts.cluster.known_hosts),
            "identity_file": str(hosts.cluster.client_key),
            "python": str(python),
        }
        config = cli.configure("direct", deploy_config)
        settings = load_settings({"deploy": {"repo": str(repo.path), **deploy_config}})
        if migrations:
            bl.add_noop_migration(repo, next(counter))
        cli.run(config, "setup")
        cli.run(config, "deploy", "--json")
        if not migrations:
            found.append(Condition("no migrations", cli, config, settings, repo.bump))
            continue
        found.append(Condition("migrations, none pending", cli, config, settings, repo.bump))
        found.append(
            Condition(
                "1 pending migration",
                cli,
                config,
                settings,
                lambda repo=repo: bl.add_noop_migration(repo, next(counter)),
            )
        )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    directory = bl.workdir("bench-profile-")
    os.environ["HOME"] = str(directory / "home")
    print(f"profile of a warm 1-host deploy: {bl.machine()}")
    hosts = bl.start_hosts(directory, 1)
    try:
        python = bl.host_python(directory)
        kinds = conditions(hosts, directory, python)

        # 1. the CLI, interleaved
        figures: dict[str, list[bl.Timed]] = {kind.title: [] for kind in kinds}
        for number in range(options.rounds + 1):
            for kind in bl.rotate(kinds, number):
                timed = kind.run_cli()
                if number:  # the first round warms up
                    figures[kind.title].append(timed)
        print(f"\n1. invoke deploy --json, {options.rounds} interleaved rounds, median [IQR]")
        for kind in kinds:
            runs = figures[kind.title]
            print(f"  {kind.title}: {bl.spread([t.seconds for t in runs])}")
            names = list(dict.fromkeys(n for t in runs for n in t.data["phases"]))
            for name in names:
                values = [t.data["phases"].get(name, 0.0) for t in runs]
                print(f"    {name:22} {bl.spread(values)}")
            outside = [t.seconds - sum(t.data["phases"].values()) for t in runs]
            print(f"    {'outside the phases':22} {bl.spread(outside)}")
        plain = [t.seconds for t in figures[kinds[0].title]]
        for kind in kinds[1:]:
            more = [t.seconds for t in figures[kind.title]]
            extra = [a - b for a, b in zip(more, plain, strict=True)]
            print(f"  {kind.title} costs, paired, over no migrations: {bl.spread(extra)}")

        # 2. the client's start-up
        print("\n2. the client's start-up (median of 10)")
        exe = sys.executable
        runs = timed_runs([exe, "-c", "pass"], 10)
        print(f"  python -c pass                          {median_ms(runs)}")
        for module in ("deploytools.tasks", "deploytools.deploy", "fabric", "invoke"):
            runs = timed_runs([exe, "-c", f"import {module}"], 10)
            print(f"  python -c 'import {module}'{' ' * (22 - len(module))}{median_ms(runs)}")
        plain_kind = kinds[0]
        runs = timed_runs(
            [exe, "-m", "invoke", "-f", str(plain_kind.config), "--list"],
            10,
            cwd=plain_kind.cli.repo.path,
        )
        print(f"  invoke --list (start-up, config, tasks)  {median_ms(runs)}")
        plain_kind.step()
        env = {**os.environ, "HOME": str(directory / "home")}
        done = subprocess.run(
            [exe, "-X", "importtime", "-m", "invoke", "-f", str(plain_kind.config), "deploy",
             "--json"],
            cwd=plain_kind.cli.repo.path, capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        total, slowest = top_imports(done.stderr)
        print(f"  imports of invoke deploy: {total * 1000:.0f} ms (-X importtime); slowest:")
        for seconds, module in slowest:
            print(f"    {seconds * 1000:7.1f} ms  {module}")

        # 3. cProfile, in-process
        from deploytools.deploy import deploy
        from deploytools.output import Reporter

        quiet = Reporter(json_mode=True)
        print("\n3. cProfile of deploy() in-process, every thread (one warm deploy each)")
        for kind in kinds:
            kind.step()
            stats, wall = profile_all_threads(lambda k=kind: deploy(k.settings, reporter=quiet))
            print(f"  {kind.title}: {wall * 1000:.0f} ms wall; summed over threads: waits add up")
            for order, pattern, count in (("cumulative", "deploytools", 14), ("tottime", "", 14)):
                stream = io.StringIO()
                stats.stream = stream
                stats.sort_stats(order).print_stats(pattern, count)
                print(f"   by {order}" + (f" ({pattern} only)" if pattern else "") + ":")
                print(_condensed(stream.getvalue()))

        # 4. the timeline
        print("\n4. timeline of one deploy (in-process; +ms from the start of deploy())")
        timeline = Timeline()
        timeline.install()
        clock = HostClock(directory, hosts.user)
        for kind in kinds:
            kind.step()
            timeline.origin = started = time.perf_counter()
            inside = clock.timing(lambda k=kind: deploy(k.settings, reporter=quiet))
            timeline.show(kind.title, time.perf_counter() - started, inside)

        # 5. the host side
        print("\n5. the host side")
        if bl.which("strace") and bl.is_root():
            for kind in kinds:
                kind.step()
                programs = trace_host(
                    hosts.hosts[0], lambda k=kind: deploy(k.settings, reporter=quiet)
                )
                shown = ", ".join(f"{name} {n}" for name, n in programs.most_common())
                print(
                    f"  programs run on the host, {kind.title}: {sum(programs.values())}: {shown}"
                )
        else:
            print("  (strace missing or not root: no trace of the host's programs)")
        root = hosts.local(0, f"{NAME}-migrations")
        release = root / "current"
        runner = [str(python), "-m", "deploytools.datamig", "check", "--json"]
        runner += ["--path", "migrations", "--root", str(root)]
        user = hosts.user
        for title, argv in (
            ("python3 -c pass (the system's)", ["/usr/bin/python3", "-c", "pass"]),
            ("deploy.python -c pass", [str(python), "-c", "pass"]),
            ("import sqlalchemy", [str(python), "-c", "import sqlalchemy"]),
            ("import deploytools.datamig.runner", [str(python), "-c", f"import {RUNNER}"]),
            # what the interpreter's teardown costs a runner that exits
            ("the same, then os._exit(0)",
             [str(python), "-c", f"import os, {RUNNER}; os._exit(0)"]),
            ("datamig check --json (nothing pending)", runner),
        ):  # fmt: skip
            runs = timed_runs(as_login_user(user, argv), 10, cwd=release)
            print(f"  {title:42} {median_ms(runs)}")
        # an environment without bytecode (uv pip install / uv sync without --compile-bytecode):
        # the runner writes none, so each start compiles what it imports
        empty = directory / "no-bytecode"
        empty.mkdir(mode=0o755)
        runs = timed_runs(
            as_login_user(user, ["env", f"PYTHONPYCACHEPREFIX={empty}", *runner]), 5, cwd=release
        )
        print(f"  {'the same, environment without bytecode':42} {median_ms(runs)}")
        done = subprocess.run(
            as_login_user(user, [str(python), "-X", "importtime", *runner[1:]]),
            cwd=release, capture_output=True, text=True, check=True,
        )  # fmt: skip
        total, slowest = top_imports(done.stderr, 8)
        print(f"  imports of datamig check: {total * 1000:.0f} ms; slowest top-level:")
        for seconds, module in slowest:
            print(f"    {seconds * 1000:7.1f} ms  {module}")

        # 6. the floor
        print("\n6. the floor (paramiko with TCP_NODELAY, median of 10)")
        floor = ssh_floor(hosts, 10)
        rows = [
            ("connect (TCP, handshake, publickey auth)", floor["connect"]),
            ("exec 'true', the first on the connection", floor["first"]),
            ("  the same, TCP_QUICKACK after every read", floor["first-quickack"]),
            ("exec 'true', the first after a 100 ms pause", floor["paused"]),
            ("exec 'true', later", floor["true"]),
        ]
        for name, text in floor_libraries().items():
            what = "the upload's functions" if name == "upload" else "the whole library"
            rows.append((f"exec 'sh -c <{what} ({len(text):,} B)>; true'", floor[name]))
            local = timed_runs(["sh", "-c", text + "root=/srv\ntrue\n"], 20)
            rows.append((f"  locally: sh -c <{what}>", local))
        rows.append(("locally: sh -c true", timed_runs(["sh", "-c", "true"], 20)))
        for title, values in rows:
            print(f"  {title:58} {median_ms(values)}")

        # 7. what-ifs
        print(
            f"\n7. what if: candidate changes patched into the client, in-process, warm deploy "
            f"then rollback, no migrations, {options.rounds} interleaved rounds"
        )
        what_ifs(kinds[0], hosts, options.rounds)

        # 8. what-ifs on the command line
        print(
            f"\n8. what if, on the command line (start-up included), no migrations, "
            f"{options.rounds} interleaved rounds"
        )
        cli_what_ifs(kinds[0], options.rounds)
    finally:
        hosts.stop()
        bl.cleanup(directory)
    return 0


def _condensed(text: str) -> str:
    """pstats output without its preamble and blank lines, paths shortened."""
    keep = []
    for line in text.splitlines():
        if (
            not line.strip()
            or "function calls" in line
            or line.strip().startswith(("Ordered by", "List reduced"))
        ):
            continue
        line = re.sub(r"/\S*/(site-packages|lib/python3\.\d+)/", "", line)
        line = line.replace(str(bl.REPO) + "/", "")
        keep.append("    " + line.strip())
    return "\n".join(keep)


if __name__ == "__main__":
    sys.exit(main())
