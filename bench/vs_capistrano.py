"""deploytools next to Capistrano 3 on the same hosts, with the same application.

Starts three sshd hosts on loopback, each with its own ``/srv`` (a mount namespace) and a clean
login user, and an application of ~300 text files (5 MB) in git. Both tools deploy it to
``/srv/<case>/…`` with their defaults and nothing extra: no lock file, no restart or health
hook. Capistrano runs stock (its git strategy: a mirror of the repository on every host,
``git archive`` into the release), and again with TCP_NODELAY patched into net-ssh
(``RUBYOPT=-rFILE``). deploytools runs as users run it: ``invoke deploy --json``.

Cases (each on its own roots and its own copy of the application):

- warm deploy, no migrations: 1 and 3 hosts (a new commit changing one file);
- warm deploy, 1 pending no-op migration: 1 and 3 hosts (deploytools' runner applies it on the
  first host; Capistrano runs ``python3 -c pass`` there after ``deploy:symlink:release``, the
  least a migration step costs);
- rollback: 1 and 3 hosts (each round deploys, untimed, then times the rollback);
- the 100 MB application (5 MB of text, 95 MB of incompressible assets) with one changed text
  file, 3 hosts.

Each round makes one commit and runs the three tools in turn, in a rotating order; a figure is
the median over the rounds, with its interquartile range, and "deploytools ÷ tool" is the
median of the per-round ratios (paired, so the machine's noise mostly cancels). After the
timed rounds, one more round per tool goes through a byte-counting TCP proxy in front of every
host (``tests/servers.py: CountingProxy``) with the login shell replaced by a wrapper that logs
every exec request: commands, connections and bytes client→host, per host. Capistrano's
``git remote update`` fetches from the repository directly (not over the deploy's SSH
connection), as it would from a git server.

Run as root, with Capistrano installed (``apt-get install -y capistrano``):

    python bench/vs_capistrano.py [--rounds 15] [--cases warm-1,warm-3,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import benchlib as bl

TOOLS = ("deploytools", "cap", "cap+nodelay")
NODELAY_RB = """\
# Loaded with RUBYOPT=-rTHIS_FILE: TCP_NODELAY on every socket Net::SSH opens (it leaves Nagle's
# algorithm on, which delays each small packet that follows an unacknowledged one).
require "socket"

module DeploytoolsBenchNoDelay
  def tcp(*args, **kwargs, &block)
    socket = super(*args, **kwargs)
    socket.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
    return socket unless block
    begin
      block.call(socket)
    ensure
      socket.close unless socket.closed?
    end
  end
end
Socket.singleton_class.prepend(DeploytoolsBenchNoDelay)
"""


@dataclass(frozen=True)
class CaseSpec:
    name: str
    title: str
    hosts: int
    migrate: bool = False
    rollback: bool = False
    big: bool = False
    target: tuple[str, float] | None = None  # (the tool compared with, the highest ratio)


CASES = (
    CaseSpec("warm-1", "warm deploy, no migrations, 1 host", 1, target=("cap+nodelay", 0.8)),
    CaseSpec("warm-3", "warm deploy, no migrations, 3 hosts", 3, target=("cap+nodelay", 0.8)),
    CaseSpec(
        "migrate-1",
        "warm deploy, 1 pending no-op migration, 1 host",
        1,
        migrate=True,
        target=("cap+nodelay", 1.0),
    ),
    CaseSpec(
        "migrate-3",
        "warm deploy, 1 pending no-op migration, 3 hosts",
        3,
        migrate=True,
        target=("cap+nodelay", 1.0),
    ),
    CaseSpec("rollback-1", "rollback, 1 host", 1, rollback=True, target=("cap", 0.25)),
    CaseSpec("rollback-3", "rollback, 3 hosts", 3, rollback=True, target=("cap", 0.25)),
    CaseSpec(
        "big-3",
        "100 MB app, one changed text file, 3 hosts",
        3,
        big=True,
        target=("cap+nodelay", 1.0),
    ),
)


# -- Capistrano ---------------------------------------------------------------------------------


def capfile() -> str:
    return (
        'require "capistrano/setup"\n'
        'require "capistrano/deploy"\n'
        'require "capistrano/scm/git"\n'
        "install_plugin Capistrano::SCM::Git\n"
    )


def deploy_rb(repo: Path, deploy_to: str, hosts: bl.BenchHosts, migrate: bool) -> str:
    ssh_options = (
        "{\n"
        f"  keys: [{json.dumps(str(hosts.cluster.client_key))}], keys_only: true,\n"
        "  use_agent: false, auth_methods: %w[publickey], config: false,\n"
        "  non_interactive: true, verify_host_key: :always,\n"
        f"  user_known_hosts_file: {json.dumps(str(hosts.cluster.known_hosts))},\n"
        '  global_known_hosts_file: "/dev/null",\n'
        "}"
    )
    text = (
        'set :application, "benchapp"\n'
        f"set :repo_url, {json.dumps(str(repo))}\n"
        'set :branch, "main"\n'
        f"set :deploy_to, {json.dumps(deploy_to)}\n"
        # on each host's own /srv, not a /tmp every host shares
        f"set :tmp_dir, {json.dumps(deploy_to + '-tmp')}\n"
        "set :keep_releases, 5\n"
        f"set :ssh_options, {ssh_options}\n"
    )
    if migrate:
        text += (
            "\nnamespace :bench do\n"
            '  desc "The least a migration step costs: one Python start on the db host"\n'
            "  task :migrate do\n"
            "    on primary(:db) do\n"
            "      within release_path do\n"
            '        execute :python3, "-c", "pass"\n'
            "      end\n"
            "    end\n"
            "  end\n"
            "end\n"
            'after "deploy:symlink:release", "bench:migrate"\n'
        )
    return text


def stage_rb(hosts: bl.BenchHosts, count: int, proxied: bool) -> str:
    lines = []
    for index in range(count):
        host, port = hosts.hosts[index].address, hosts.hosts[index].port
        if proxied:
            host, port = hosts.proxies[index].address, hosts.proxies[index].port
        roles = "%w[app web db]" if index == 0 else "%w[app web]"
        primary = ", primary: true" if index == 0 else ""
        lines.append(
            f'server "{host}", port: {port}, user: "{hosts.user}", roles: {roles}{primary}\n'
        )
    return "".join(lines)


class CapProject:
    """A Capistrano project (Capfile, config/deploy.rb, one stage per way in) for one case."""

    def __init__(self, directory: Path, home: Path, nodelay: Path) -> None:
        self.directory = directory
        self.home = home
        self.nodelay = nodelay
        self.last_start = 0.0

    def write(self, repo: Path, deploy_to: str, hosts: bl.BenchHosts, spec: CaseSpec) -> None:
        (self.directory / "config" / "deploy").mkdir(parents=True)
        (self.directory / "Capfile").write_text(capfile())
        (self.directory / "config" / "deploy.rb").write_text(
            deploy_rb(repo, deploy_to, hosts, spec.migrate)
        )
        for stage, proxied in (("production", False), ("counted", True)):
            (self.directory / "config" / "deploy" / f"{stage}.rb").write_text(
                stage_rb(hosts, spec.hosts, proxied)
            )

    def run(self, task: str, *, nodelay: bool = False, stage: str = "production") -> float:
        # Capistrano names a release by the second it starts: never two in one second
        if int(time.time()) == int(self.last_start):
            time.sleep(int(self.last_start) + 1.01 - time.time())
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "RUBYOPT")}
        env["HOME"] = str(self.home)
        if nodelay:
            env["RUBYOPT"] = f"-r{self.nodelay}"
        self.last_start = time.time()
        started = time.perf_counter()
        done = subprocess.run(
            ["cap", stage, task],
            cwd=self.directory,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        seconds = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(
                f"cap {stage} {task} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                f"{done.stderr[-3000:]}"
            )
        return seconds


# -- one case -----------------------------------------------------------------------------------


@dataclass
class Figures:
    seconds: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TOOLS})
    phases: list[dict[str, float]] = field(default_factory=list)
    # per host: exec requests, connections, bytes client→host, bytes of the command lines
    counted: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    reported: list[tuple[int, int, int]] = field(default_factory=list)  # deploytools' --json


class Case:
    """One case: its application, deploytools' configs and Capistrano project, its rounds."""

    def __init__(
        self, spec: CaseSpec, hosts: bl.BenchHosts, directory: Path, python: Path, nodelay: Path
    ) -> None:
        self.spec = spec
        self.hosts = hosts
        self.directory = directory / spec.name
        self.directory.mkdir(mode=0o755)
        (self.directory / "home").mkdir(mode=0o700)
        self.python = python
        self.figures = Figures()
        asset_bytes = 95 * bl.MB if spec.big else 0
        self.repo = bl.make_app(self.directory / "app", asset_bytes=asset_bytes)
        self.dt = bl.DeployToolsCLI(self.repo, self.directory, "deploytools")
        self.cap = CapProject(self.directory / "cap", self.directory / "home", nodelay)
        self.migrations = 0

    def configure(self) -> None:
        name = f"{self.spec.name}/dt"
        common = {
            "root": self.hosts.root(0, name),
            "known_hosts": str(self.hosts.cluster.known_hosts),
            "identity_file": str(self.hosts.cluster.client_key),
            "python": str(self.python),
            "keep_releases": 5,
        }
        self.direct = self.dt.configure(
            "direct", {"hosts": self.hosts.entries(self.spec.hosts, name), **common}
        )
        self.counted = self.dt.configure(
            "counted", {"hosts": self.hosts.entries(self.spec.hosts, name, True), **common}
        )
        self.cap.write(
            self.repo.path, self.hosts.root(0, f"{self.spec.name}/cap"), self.hosts, self.spec
        )

    def start(self) -> None:
        """Set up, the first (cold) deploy of each tool, then one warm round, untimed."""
        self.configure()
        self.dt.run(self.direct, "setup")
        self.dt.run(self.direct, "deploy", "--json")
        self.cap.run("deploy")
        self.next_commit(0)
        for tool in TOOLS:
            self.prepare(tool)
            self.measure(tool)

    def next_commit(self, number: int) -> None:
        if self.spec.migrate:
            self.migrations += 1
            bl.add_noop_migration(self.repo, self.migrations)
        elif self.spec.big:
            file = number % 300  # make_app puts module N in package N % 12
            bl.change_text_file(self.repo, f"app/pkg{file % 12:02d}/module{file:03d}.py", number)
        else:
            self.repo.bump()

    def prepare(self, tool: str) -> None:
        """Untimed work a measurement needs: for a rollback, a deploy to roll back."""
        if not self.spec.rollback:
            return
        if tool == "deploytools":
            self.repo.bump()
            self.dt.run(self.direct, "deploy", "--json")
        else:
            self.cap.run("deploy", nodelay=tool == "cap+nodelay")

    def measure(self, tool: str, counted: bool = False) -> bl.Timed:
        config = self.counted if counted else self.direct
        stage = "counted" if counted else "production"
        if tool == "deploytools":
            task = "rollback" if self.spec.rollback else "deploy"
            return self.dt.run(config, task, "--json")
        task = "deploy:rollback" if self.spec.rollback else "deploy"
        return bl.Timed(self.cap.run(task, nodelay=tool == "cap+nodelay", stage=stage))

    def rounds(self, count: int) -> None:
        for number in range(1, count + 1):
            self.next_commit(number)
            for tool in bl.rotate(list(TOOLS), number):
                self.prepare(tool)
                timed = self.measure(tool)
                self.figures.seconds[tool].append(timed.seconds)
                if timed.data and timed.data.get("phases"):
                    self.figures.phases.append(timed.data["phases"])
            print(
                f"  round {number}/{count}: "
                + ", ".join(f"{t} {self.figures.seconds[t][-1]:.2f} s" for t in TOOLS),
                file=sys.stderr,
            )

    def count(self, counter: bl.CommandCounter) -> None:
        """One more round through the proxies, counting commands, connections and bytes."""
        self.next_commit(10_000)
        addresses = [h.address for h in self.hosts.hosts[: self.spec.hosts]]
        for tool in TOOLS:
            self.prepare(tool)
            before = self.hosts.traffic()
            if counter.available:
                with counter.counting() as commands:
                    timed = self.measure(tool, counted=True)
            else:
                commands = {}
                timed = self.measure(tool, counted=True)
            after = self.hosts.traffic()
            sizes = counter.sizes if counter.available else {}
            self.figures.counted[tool] = [
                (
                    commands.get(address, -1),
                    after[i][0] - before[i][0],
                    after[i][1] - before[i][1],
                    sum(sizes.get(address, [])) if address in sizes else -1,
                )
                for i, address in enumerate(addresses)
            ]
            if timed.data:
                self.figures.reported = [
                    (h["commands"], h["connections"], h.get("bytes_sent", -1))
                    for h in timed.data["hosts"]
                ]

    def report(self) -> None:
        spec, seconds = self.spec, self.figures.seconds
        rounds = len(seconds["deploytools"])
        print(f"\n{spec.title} ({rounds} rounds)")
        print(f"  {'':20} {'wall time, median [IQR]':28} deploytools ÷ tool, paired [IQR]")
        for tool in TOOLS:
            ratio = (
                ""
                if tool == "deploytools"
                else bl.ratio_text(seconds["deploytools"], seconds[tool])
            )
            print(f"  {tool:20} {bl.spread(seconds[tool]):28} {ratio}")
        if spec.target:
            against, limit = spec.target
            ratio = bl.paired(seconds["deploytools"], seconds[against])[1]
            verdict = "met" if ratio <= limit else "NOT met"
            print(f"  target: deploytools ≤ {limit:g}x {against}: {ratio:.2f}x, {verdict}")
        if self.figures.phases:
            names = list(dict.fromkeys(n for p in self.figures.phases for n in p))
            medians = {
                n: bl.quartiles([p.get(n, 0.0) for p in self.figures.phases])[1] for n in names
            }
            outside = [
                s - sum(p.values())
                for s, p in zip(seconds["deploytools"], self.figures.phases, strict=True)
            ]
            shown = ", ".join(f"{n} {v:.3f}" for n, v in medians.items())
            print(f"  deploytools phases, median s: {shown}")
            print(
                "  outside the phases (interpreter start, imports, config, connecting "
                f"before the build ends, exit): {bl.spread(outside)}"
            )
        if self.figures.counted:
            print(
                "  per host, one counted run: exec requests, connections, bytes client→host "
                "(of which command lines)"
            )
            for tool in TOOLS:
                cells = "; ".join(
                    f"host{i + 1} {c if c >= 0 else '?'} cmd, {n} conn, {b:,} B ({lines:,} B)"
                    if lines >= 0
                    else f"host{i + 1} {c} cmd, {n} conn, {b:,} B"
                    for i, (c, n, b, lines) in enumerate(self.figures.counted.get(tool, []))
                )
                print(f"  {tool:20} {cells}")
            if self.figures.reported:
                cells = "; ".join(
                    f"host{i + 1} {c} cmd, {n} conn, " + (f"{b:,} B" if b >= 0 else "? B")
                    for i, (c, n, b) in enumerate(self.figures.reported)
                )
                print(f"  {'(deploytools --json)':20} {cells}")


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--cases", default=",".join(c.name for c in CASES))
    options = parser.parse_args()
    chosen = [c for c in CASES if c.name in options.cases.split(",")]
    if bl.which("cap") is None:
        print("Capistrano is not installed: apt-get install -y capistrano (then run this again)")
        return 0
    if not bl.require_root_for("the comparison with Capistrano"):
        return 0
    directory = bl.workdir("bench-vs-cap-")
    nodelay = directory / "nodelay.rb"
    nodelay.write_text(NODELAY_RB)
    cap_version = subprocess.run(["cap", "--version"], capture_output=True, text=True).stdout
    print(f"deploytools vs Capistrano: {bl.machine()}")
    print(f"  {cap_version.strip()}; hosts: sshd on 127.0.0.x, each with its own /srv")
    hosts = bl.start_hosts(directory, max(c.hosts for c in chosen))
    try:
        hosts.add_proxies()
        counter = bl.CommandCounter(directory, hosts.user)
        python = bl.host_python(directory)
        print(f"  login user {hosts.user} (clean, bash); deploy.python {python}")
        cases = []
        for spec in chosen:
            print(f"{spec.title}: preparing", file=sys.stderr)
            case = Case(spec, hosts, directory, python, nodelay)
            bl.trust_repositories(hosts.user, [c.repo.path for c in [*cases, case]])
            case.start()
            case.rounds(options.rounds)
            case.count(counter)
            case.report()
            sys.stdout.flush()
            cases.append(case)
    finally:
        hosts.stop()
        bl.cleanup(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
