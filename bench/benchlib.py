"""What the deploy benches share: hosts, a clean login user, the application, the CLI, figures.

- ``start_hosts``: N sshd hosts on loopback (``tests/servers.py``). As root each host runs in
  its own mount namespace and sees a directory of its own at ``/srv``, so every tool deploys
  to the same path on every host, as on real machines; the login user is ``dtbench``, a
  clean user (root's ``~/.bashrc`` runs ``pyenv init``: ~110 ms per remote command). As any
  other user, the hosts log that user in and get per-host roots instead.
- ``make_app``: a git repository of ~300 text files (5 MB), plus incompressible assets for the
  large app; one changed text file per round (``AppRepo.bump``).
- ``DeployToolsCLI``: ``invoke deploy --json`` as a user runs it, timed, with its JSON answer.
- ``CommandCounter``: counts the exec requests each host serves, and the bytes of each command
  line, by making the login shell a wrapper that logs ``$SSH_CONNECTION`` and ``${#2}`` (sshd
  runs every exec request as ``shell -c CMD``; the SFTP subsystem is internal to sshd and runs
  no shell).
- ``paired``/``spread``: the median of per-round paired ratios with its interquartile range,
  which is what survives a noisy shared machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import pwd
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))

import servers  # noqa: E402
from fleet import GIT_ENV, AppRepo  # noqa: E402

BENCH_USER = "dtbench"
LOGIN_SHELL = "/bin/bash"
MB = 1_000_000


# -- the machine ----------------------------------------------------------------------------


def machine() -> str:
    """One line naming the machine, for every printed figure."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0))
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {model}, {cores} cores, "
        f"Linux {platform.release()}, Python {platform.python_version()}, {ssh.split(',')[0]}"
    )


def is_root() -> bool:
    return os.geteuid() == 0


def workdir(prefix: str) -> Path:
    """A 0755 scratch directory (a non-root login user reads keys and the repo through it)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    home = directory / "home"  # HOME for the tools: keeps the user's own ~/.ssh out
    home.mkdir(mode=0o700)
    return directory


# -- the login user ---------------------------------------------------------------------------


def ensure_login_user(name: str = BENCH_USER) -> str:
    """Create (once) a clean login user for the hosts: an empty home, bash, and a usable
    password field (``*``: sshd with ``UsePAM no`` refuses ``!``, a locked account)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        empty = Path(tempfile.mkdtemp(prefix="dtbench-skel-"))
        try:
            subprocess.run(
                ["useradd", "--create-home", "--skel", str(empty), "--shell", LOGIN_SHELL,
                 "--password", "*", name],
                check=True,
            )  # fmt: skip
        finally:
            empty.rmdir()
        entry = pwd.getpwnam(name)
    set_login_shell(name, LOGIN_SHELL)
    subprocess.run(["usermod", "--password", "*", name], check=True)
    return entry.pw_name


def set_login_shell(user: str, shell: str) -> None:
    if pwd.getpwnam(user).pw_shell != shell:
        subprocess.run(["usermod", "--shell", shell, user], check=True)


def trust_repositories(user: str, paths: list[Path]) -> None:
    """Let ``user`` read git repositories owned by root (git refuses "dubious ownership"):
    Capistrano clones the application's repository on each host as the login user."""
    entry = pwd.getpwnam(user)
    if entry.pw_uid == os.geteuid():
        return
    gitconfig = Path(entry.pw_dir) / ".gitconfig"
    gitconfig.write_text(
        "[safe]\n" + "".join(f"\tdirectory = {path}\n\tdirectory = {path}/.git\n" for path in paths)
    )
    os.chown(gitconfig, entry.pw_uid, entry.pw_gid)


def give(path: Path, user: str) -> None:
    """``chown -R user: path`` (a root the login user deploys into)."""
    entry = pwd.getpwnam(user)
    for item in [path, *path.rglob("*")]:
        os.chown(item, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


# -- hosts ----------------------------------------------------------------------------------


@dataclass
class BenchHosts:
    """sshd hosts for a bench. ``root(i, name)`` is the deploy root of ``name`` as host ``i``
    sees it, ``local(i, name)`` the same directory as this machine sees it."""

    cluster: servers.SSHCluster
    user: str
    directories: list[Path]
    namespaced: bool
    proxies: list[servers.CountingProxy] = field(default_factory=list)

    @property
    def hosts(self) -> list[servers.SSHHost]:
        return self.cluster.hosts

    def spec(self, index: int, proxied: bool = False) -> str:
        host = self.hosts[index]
        if proxied:
            proxy = self.proxies[index]
            return f"{self.user}@{proxy.address}:{proxy.port}"
        return f"{self.user}@{host.address}:{host.port}"

    def root(self, index: int, name: str) -> str:
        if self.namespaced:
            return f"/srv/{name}"
        return str(self.directories[index] / name)

    def local(self, index: int, name: str) -> Path:
        return self.directories[index] / name

    def entries(self, count: int, name: str, proxied: bool = False) -> list[Any]:
        """``deploy.hosts`` for the first ``count`` hosts (per-host roots when needed)."""
        specs = [self.spec(i, proxied) for i in range(count)]
        if self.namespaced:
            return specs
        return [{"host": s, "root": self.root(i, name)} for i, s in enumerate(specs)]

    def add_proxies(self) -> None:
        """A ``CountingProxy`` in front of every host, its key in the known_hosts file."""
        for host in self.hosts:
            proxy = servers.CountingProxy(host.address, host.port)
            proxy.write_known_hosts(self.cluster.known_hosts, host)
            self.proxies.append(proxy)

    def traffic(self) -> list[tuple[int, int]]:
        """(connections, bytes client→host) so far, per host, once every connection closed."""
        counts = []
        for proxy in self.proxies:
            proxy.wait_closed(30)
            counts.append((len(proxy.connections), proxy.client_to_server))
        return counts

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.close()
        self.cluster.stop()


def _own_mount_namespace(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False


def start_hosts(directory: Path, count: int) -> BenchHosts:
    """``count`` sshd hosts (127.0.0.1, .2, … then 127.0.x.y), each with its own ``/srv``
    when run as root; the clean login user as root, else the user running the bench."""
    user = ensure_login_user() if is_root() else pwd.getpwuid(os.geteuid()).pw_name
    cluster = servers.start_ssh_cluster(directory / "ssh", servers.loopback_addresses(count))
    try:
        (directory / "hosts").mkdir(mode=0o755)
        directories = []
        for index in range(count):
            path = directory / "hosts" / f"host{index + 1}"
            path.mkdir(mode=0o755)
            if is_root():
                give(path, user)
            directories.append(path)
        namespaced = is_root() and all(_own_mount_namespace(h.process.pid) for h in cluster.hosts)
        if namespaced:
            Path("/srv").mkdir(exist_ok=True)
            for host, path in zip(cluster.hosts, directories, strict=True):
                mount = host.in_namespace(["mount", "--bind", str(path), "/srv"])
                subprocess.run(mount, check=True, capture_output=True)
    except BaseException:
        cluster.stop()
        raise
    return BenchHosts(cluster, user, directories, namespaced)


# -- counting exec requests -----------------------------------------------------------------


class CommandCounter:
    """Counts the exec requests each host serves, by address: while ``counting()``, the login
    user's shell is a wrapper that appends ``$SSH_CONNECTION`` and the length of the command
    line (``${#2}``: dash counts bytes) to a log, then runs bash."""

    def __init__(self, directory: Path, user: str) -> None:
        self.user = user
        self.log = directory / "commands.log"
        self.wrapper = directory / "counting-shell"
        self.sizes: dict[str, list[int]] = {}  # command-line bytes per host, last counting()
        self.wrapper.write_text(
            f'#!/bin/sh\nprintf "%s %s\\n" "${{SSH_CONNECTION:-- - local -}}" "${{#2}}" '
            f">> {self.log}\n"
            f'exec {LOGIN_SHELL} "$@"\n'
        )
        self.wrapper.chmod(0o755)
        self.log.touch()
        self.log.chmod(0o666)

    @property
    def available(self) -> bool:
        """Only root can change the login shell of the hosts' user."""
        return is_root() and self.user != "root"

    @contextlib.contextmanager
    def counting(self) -> Iterator[dict[str, int]]:
        """Yields a dict filled, on exit, with exec requests per host address."""
        counts: dict[str, int] = {}
        self.sizes = {}
        self.log.write_text("")
        set_login_shell(self.user, str(self.wrapper))
        try:
            yield counts
        finally:
            set_login_shell(self.user, LOGIN_SHELL)
            for line in self.log.read_text().splitlines():
                parts = line.split()
                address = parts[2] if len(parts) == 5 else "?"
                counts[address] = counts.get(address, 0) + 1
                if len(parts) == 5 and parts[4].isdigit():
                    self.sizes.setdefault(address, []).append(int(parts[4]))


# -- the application ------------------------------------------------------------------------

# words for source-like text
WORDS = (
    "release", "host", "deploy", "switch", "current", "shared", "ledger", "migration", "lock",
    "upload", "manifest", "archive", "connection", "command", "phase", "rollback", "health",
    "restart", "batch", "version", "checksum", "environment", "def", "return", "import", "class",
    "self", "value", "name", "path", "config",
)  # fmt: skip


def _text(rng: random.Random, size: int) -> str:
    """Source-like text (compresses about 4x, as code does)."""
    lines, length = [], 0
    while length < size:
        line = "    " * rng.randrange(3) + " ".join(rng.choices(WORDS, k=rng.randrange(3, 12)))
        lines.append(line)
        length += len(line) + 1
    return "\n".join(lines)[:size] + "\n"


def make_app(path: Path, *, files: int = 300, text_bytes: int = 5 * MB, asset_bytes: int = 0):
    """A git repository standing for the application: ``files`` text files totalling
    ``text_bytes`` in a few packages, plus ``asset_bytes`` of incompressible assets in 5 MB
    files. Deterministic text, random assets."""
    rng = random.Random(1729)
    repo = AppRepo(path)
    content: dict[str, str | None] = {}
    per_file = text_bytes // files
    for number in range(files):
        package = f"app/pkg{number % 12:02d}"
        content[f"{package}/module{number:03d}.py"] = _text(rng, per_file)
    repo.commit(content, "the application")
    if asset_bytes:
        assets = path / "assets"
        assets.mkdir()
        left, number = asset_bytes, 0
        while left > 0:
            chunk = min(left, 5 * MB)
            (assets / f"blob{number:02d}.bin").write_bytes(os.urandom(chunk))
            left -= chunk
            number += 1
        repo.git("add", "-A")
        repo.git("commit", "-q", "-m", "assets")
    return repo


def add_noop_migration(repo: AppRepo, number: int) -> str:
    """Commit one more migration that does nothing: one pending migration for the next
    deploy. Returns its file name."""
    name = f"{20240101000000 + number}_noop_{number}.py"
    body = f'"""No-op migration {number} (bench)."""\n\n\ndef run(ctx):\n    pass\n'
    repo.commit({f"migrations/{name}": body}, f"migration {number}")
    return name


def change_text_file(repo: AppRepo, path: str, seed: int) -> None:
    """Rewrite one text file of the application (about its present size) and commit."""
    size = max(1000, (repo.path / path).stat().st_size) if (repo.path / path).exists() else 17000
    repo.commit({path: _text(random.Random(seed), size)}, f"change {path}")


def host_python(directory: Path) -> Path:
    """A Python the login user can run that imports this checkout's deploytools (for
    ``deploy.python``): a venv from /usr/bin/python3 with the dependencies from the
    ``.wheelhouse/`` cache that ``dev.py test`` fills, and a .pth naming this checkout.
    Compiled to bytecode, as pip installs: the runner writes no bytecode (it keeps
    ``__pycache__`` out of releases), so without it every start compiles SQLAlchemy again."""
    venv = directory / "host-python"
    uv = Path(sys.executable).parent / "uv"
    base = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    env = {**os.environ, "UV_CACHE_DIR": str(directory / "uv-cache")}
    subprocess.run([str(uv), "venv", "-q", "--python", base, str(venv)], check=True, env=env)
    # what the runner imports (redis-py only on first use of ctx.redis: not needed here)
    requirements = ["sqlalchemy>=2.0", "psycopg[binary]>=3.1", "rich>=13.0"]
    wheels = REPO / ".wheelhouse"
    subprocess.run(
        [str(uv), "pip", "install", "-q", "--python", str(venv / "bin/python"),
         "--offline", "--no-index", "--find-links", str(wheels), "--compile-bytecode",
         *requirements],
        check=True, env=env,
    )  # fmt: skip
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deploytools-checkout.pth").write_text(str(REPO) + "\n")
    return venv / "bin/python"


# -- running deploytools as a user does ---------------------------------------------------------


@dataclass
class Timed:
    seconds: float
    data: dict[str, Any] | None = None
    output: str = ""


class DeployToolsCLI:
    """``python -m invoke -f CONFIG TASK --json`` in the application's work tree."""

    def __init__(self, repo: AppRepo, directory: Path, name: str) -> None:
        self.repo = repo
        self.directory = directory
        self.name = name
        self.home = directory / "home"

    def configure(self, label: str, deploy: dict[str, Any], datamig: dict | None = None) -> Path:
        path = self.directory / f"{self.name}-{label}.yaml"
        config = {"deploy": {"repo": str(self.repo.path), **deploy}, "datamig": datamig or {}}
        path.write_text(json.dumps(config, indent=2))
        return path

    def run(self, config: Path, *args: str, entry: tuple[str, ...] = ("-m", "invoke")) -> Timed:
        """``entry``: how Python starts invoke (another script for a what-if)."""
        command = [sys.executable, *entry, "-f", str(config), *args]
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env |= {"HOME": str(self.home), "COLUMNS": "200", **GIT_ENV}
        started = time.perf_counter()
        done = subprocess.run(
            command, cwd=self.repo.path, capture_output=True, text=True, env=env, check=False
        )
        seconds = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(
                f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                f"{done.stderr[-3000:]}"
            )
        data = json.loads(done.stdout) if "--json" in args else None
        return Timed(seconds, data, done.stderr)


# -- figures ------------------------------------------------------------------------------------


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def spread(values: list[float], unit: str = "s", digits: int = 3) -> str:
    """``median [Q1-Q3] unit``."""
    q1, median, q3 = quartiles(values)
    text = f"{median:,.{digits}f} [{q1:,.{digits}f}-{q3:,.{digits}f}]"
    return f"{text} {unit}" if unit else text


def paired(ours: list[float], theirs: list[float]) -> tuple[float, float, float]:
    """Median and IQR of the per-round ratios ours/theirs: (Q1, median, Q3)."""
    return quartiles([a / b for a, b in zip(ours, theirs, strict=True)])


def ratio_text(ours: list[float], theirs: list[float]) -> str:
    q1, median, q3 = paired(ours, theirs)
    return f"{median:.2f}x [{q1:.2f}-{q3:.2f}]"


def rotate(items: list[Any], by: int) -> list[Any]:
    """``items`` starting at ``by``: each round runs the tools in a different order."""
    by %= len(items)
    return items[by:] + items[:by]


def cleanup(directory: Path) -> None:
    servers.remove_tree(directory)


def require_root_for(what: str) -> bool:
    if is_root():
        return True
    print(f"{what} needs root (sshd hosts with their own /srv, a clean login user); skipped.")
    return False


def which(name: str) -> str | None:
    return shutil.which(name)
