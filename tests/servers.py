"""Throwaway real servers on loopback: PostgreSQL, Redis and OpenSSH, from the system binaries.

Used by the pytest fixtures in ``conftest.py`` and by the scripts in ``bench/``. Every server
listens on a free loopback port, keeps its files in a directory of its own, and is stopped
(with its children) by ``stop()``. Everything works as root (CI) and as any other user.

Faults and measurements for the deploy tests live here too: cutting or freezing a host's open
sessions (``SSHHost.kill_sessions``, ``stop_session``), a host whose banner never comes
(``hung_ssh_server``) and a proxy counting bytes on the wire (``CountingProxy``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def _pg_bin() -> Path:
    """The newest PostgreSQL server binaries Debian installed (override: DEPLOYTOOLS_PG_BIN)."""
    if "DEPLOYTOOLS_PG_BIN" in os.environ:
        return Path(os.environ["DEPLOYTOOLS_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
SSHD = "/usr/sbin/sshd"


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now at ``address``."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def wait_for_port(address: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                message = f"nothing listens on {address}:{port} after {timeout}s"
                raise RuntimeError(message) from None
            time.sleep(0.02)


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _as_postgres_user() -> list[str]:
    """initdb and postgres refuse to run as root: drop to the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class PostgresServer:
    """A PostgreSQL cluster with trust authentication for the ``postgres`` user."""

    directory: Path
    port: int

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [
                *_as_postgres_user(),
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.directory / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def _run_or_explain(argv: list[str], what: str, log: Path | None = None) -> None:
    """Run a server's setup command; on failure raise with its output (and its log)."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        output = (done.stdout + done.stderr).strip()
        if log is not None and log.exists():
            output += f"\n{log}:\n" + log.read_text(errors="replace").strip()
        raise RuntimeError(f"{what} failed with status {done.returncode}:\n{output}")


def start_postgres(directory: Path) -> PostgresServer:
    """initdb + pg_ctl start in ``directory`` (created 0755 and owned by postgres when root).
    Raises with the server's output and log when it does not start."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data = directory / "data"
    port = free_port()
    run_as = _as_postgres_user()
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    _run_or_explain([*run_as, *initdb, "-E", "UTF8", "--no-sync"], "initdb")
    server = PostgresServer(directory, port)
    options = (
        f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c max_connections=200"
    )
    log = directory / "log"
    pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w"]
    try:
        _run_or_explain([*run_as, *pg_ctl, "-o", options, "start"], "pg_ctl start", log)
    except BaseException:
        server.stop()  # pg_ctl may have left a postmaster behind (a timeout, Ctrl-C)
        raise
    return server


@dataclass
class RedisServer:
    """A redis-server without persistence."""

    process: subprocess.Popen
    port: int

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        _stop_process(self.process)


def start_redis(directory: Path) -> RedisServer:
    """redis-server on a free loopback port; raises if the binary is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "redis.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(directory),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port("127.0.0.1", port)
    except BaseException as error:
        _stop_process(process)
        if not isinstance(error, RuntimeError):
            raise
        output = log.read_text(errors="replace").strip()
        raise RuntimeError(f"redis-server did not start ({error}). Its log:\n{output}") from None
    return RedisServer(process, port)


# -- processes ------------------------------------------------------------------------------------


def _parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process on the machine, read from /proc."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # the command name (field 2) may hold spaces and parentheses: fields follow the last ")"
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """Every descendant of ``pid`` (not ``pid`` itself), parents before their children."""
    children: dict[int, list[int]] = {}
    for child, parent in _parent_pids().items():
        children.setdefault(parent, []).append(child)
    tree, queue = [], [pid]
    while queue:
        for child in sorted(children.get(queue.pop(0), [])):
            tree.append(child)
            queue.append(child)
    return tree


def _process_state(pid: int) -> str:
    """The one-letter state of ``pid`` (``T``: stopped), or "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def signal_all(pids: list[int], signum: int) -> None:
    """Send ``signum`` to each of ``pids`` that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def processes_using(directory: Path) -> list[tuple[int, str]]:
    """Processes (but this one and its parents) whose working directory or command line lies
    under ``directory``: what a run left running there. Returns ``(pid, command line)``."""
    parents = _parent_pids()
    ours, pid = {os.getpid()}, os.getpid()
    while pid > 1:
        pid = parents.get(pid, 0)
        ours.add(pid)
    prefix = str(directory)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            command = " ".join(arg.decode(errors="replace") for arg in argv).strip()
            cwd = os.readlink(Path(entry.path, "cwd"))
        except OSError:
            continue  # gone, a zombie, or another user's process
        if cwd == prefix or cwd.startswith(prefix + "/") or prefix in command:
            found.append((int(entry.name), command))
    return found


def remove_tree(path: Path) -> None:
    """``rm -rf path``, also through directories a test made read-only (chmod 555)."""

    def writable_and_retry(function, failed, _exc):
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o755)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o755)
            function(failed)

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=writable_and_retry)


# -- OpenSSH -------------------------------------------------------------------------------------

DEFAULT_ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")

# sshd's own PATH for sessions (Debian's build), which SetEnv PATH replaces: we prepend to it
_SSHD_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"
_SSHD_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def loopback_addresses(count: int, first: int = 1) -> tuple[str, ...]:
    """``count`` loopback addresses from 127.0.0.<first> on, carrying over into 127.0.x.y (every
    127/8 address works on ``lo`` with no setup): hosts for a bench with many of them."""
    addresses = []
    for number in range(first, first + count):
        high, low = divmod(number, 254)
        addresses.append(f"127.0.{high}.{low + 1}" if high else f"127.0.0.{number}")
    return tuple(addresses)


@dataclass
class SSHHost:
    """One sshd "host" on its own loopback address, with its own host key.

    The login user is the one running the tests (root in CI, anyone else on a laptop): sshd runs
    as that user too, so it can only log that user in.
    """

    address: str
    port: int
    process: subprocess.Popen
    host_key: Path
    log: Path
    known_hosts_line: str = ""
    _stopped: list[int] = field(default_factory=list, repr=False)

    @property
    def user(self) -> str:
        return pwd.getpwuid(os.geteuid()).pw_name

    @property
    def spec(self) -> str:
        """The ``user@host:port`` string deploytools takes in ``deploy.hosts``."""
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return f"[{self.address}]:{self.port}"

    def session_pids(self) -> list[int]:
        """The sshd processes serving open connections. As root, one child of the listener per
        connection; as another user, that child is a monitor (``sshd: user [priv]``) and the
        session runs in its own child (``sshd: user@notty``): both are listed."""
        return [
            pid for pid in process_tree(self.process.pid) if _command_name(pid).startswith("sshd")
        ]

    def kill_sessions(self) -> list[int]:
        """Drop every open SSH connection to this host, as a network failure would: the sshd
        processes serving them die, the commands they started go on running (a remote command
        outlives its client). Returns the pids killed."""
        pids = self.session_pids()
        signal_all(pids, signal.SIGKILL)
        return pids

    def stop_session(self) -> list[int]:
        """Freeze the open sessions as a hung machine would (SIGSTOP): the sshd processes of
        every open connection and the commands they run stop answering, keepalives included.
        New connections are still accepted. Returns the pids stopped."""
        while fresh := [pid for pid in process_tree(self.process.pid) if pid not in self._stopped]:
            signal_all(fresh, signal.SIGSTOP)  # again until no child was forked meanwhile
            self._stopped.extend(fresh)
        # a signal is delivered asynchronously: return once every process has stopped
        deadline = time.monotonic() + 10
        while any(_process_state(pid) not in ("T", "") for pid in self._stopped):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sessions on {self.address} did not stop")
            time.sleep(0.005)
        return sorted(self._stopped)

    def continue_session(self) -> list[int]:
        """Thaw what ``stop_session`` froze (SIGCONT). Returns the pids continued."""
        pids, self._stopped = sorted(self._stopped), []
        signal_all(pids, signal.SIGCONT)
        return pids

    def in_namespace(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's mount namespace (a mount made there is seen by
        this host alone)."""
        return ["nsenter", "-t", str(self.process.pid), "-m", "--", *argv]

    def begin_stop(self) -> None:
        """Kill everything under the listener (sessions and the commands they run) and ask the
        listener to end; ``wait`` reaps it. Split so that a cluster stops its hosts together."""
        signal_all(process_tree(self.process.pid), signal.SIGKILL)
        if self.process.poll() is None:
            self.process.terminate()

    def wait(self) -> None:
        _stop_process(self.process)

    def stop(self) -> None:
        self.begin_stop()
        self.wait()


@dataclass
class SSHCluster:
    """Several sshd hosts sharing one client key and one known_hosts file.

    ``path_bin`` is first on the hosts' PATH (sshd's ``SetEnv``): it holds a link to the test
    environment's ``uv`` and nothing else, so the hosts find ``uv`` but the system ``python3``.
    """

    directory: Path
    client_key: Path
    known_hosts: Path
    path_bin: Path
    hosts: list[SSHHost] = field(default_factory=list)

    def stop(self) -> None:
        for host in self.hosts:
            host.begin_stop()
        for host in self.hosts:
            host.wait()


def _keygen(keys: list[tuple[Path, str]]) -> list[str]:
    """ed25519 key pairs ``(private key path, comment)``, made concurrently; their public lines."""
    running = [
        subprocess.Popen(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for path, comment in keys
    ]
    for process in running:
        _, err = process.communicate()
        if process.returncode:
            raise RuntimeError(f"ssh-keygen failed: {err.decode(errors='replace')}")
    return [Path(f"{path}.pub").read_text().strip() for path, _ in keys]


def _clean_login_shell(directory: Path) -> list[str]:
    """As root, start sshd in a mount namespace where root's ~/.bashrc is empty: the image's
    bashrc runs `pyenv init`, which adds about 110 ms to every remote command (TESTING.md)
    and would make the suite measure that instead of deploytools."""
    bashrc = Path(pwd.getpwuid(0).pw_dir) / ".bashrc"  # not $HOME: tests point HOME elsewhere
    if os.geteuid() != 0 or not bashrc.exists() or shutil.which("unshare") is None:
        return []
    if subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode:
        return []  # no mount namespaces here: sshd runs as is, only slower
    empty = directory / "empty_bashrc"
    empty.touch()
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount --bind "{empty}" "{bashrc}" && exec "$@"',
        "sh",
    ]


def _host_path_bin(directory: Path) -> Path:
    """A directory holding only a link to this environment's ``uv`` (when it has one)."""
    path_bin = directory / "bin"
    path_bin.mkdir(mode=0o755, exist_ok=True)
    beside = Path(sys.executable).parent / "uv"
    uv = str(beside) if beside.exists() else shutil.which("uv")
    if uv and not (path_bin / "uv").exists():
        (path_bin / "uv").symlink_to(uv)
    return path_bin


def _sshd_config(directory: Path, index: int, address: str, port: int, path_bin: Path) -> str:
    default_path = _SSHD_ROOT_PATH if os.geteuid() == 0 else _SSHD_PATH
    session_env = {
        "PATH": f"{path_bin}:{default_path}",
        # the hosts share this run's temp dir, and keep pip's and uv's caches out of $HOME
        "TMPDIR": tempfile.gettempdir(),
        "XDG_CACHE_HOME": str(directory / "cache"),
    }
    return (
        f"Port {port}\n"
        f"ListenAddress {address}\n"
        f"HostKey {directory / f'host{index}_ed25519_key'}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
        f"PidFile {directory / f'sshd{index}.pid'}\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        # a bench opens many connections at once: never refuse one for being early
        "MaxStartups 1000\n"
        "MaxSessions 100\n"
        "LogLevel ERROR\n"
        f"SetEnv {' '.join(f'{name}={value}' for name, value in session_env.items())}\n"
        "Subsystem sftp internal-sftp\n"
    )


def _wait_for_sshd(host: SSHHost, timeout: float = 30.0) -> None:
    """Return once ``host`` accepts connections; raise with its log if it exited or never did."""
    deadline = time.monotonic() + timeout
    while True:
        if host.process.poll() is not None:
            problem = f"exited with status {host.process.returncode}"
        elif time.monotonic() > deadline:
            problem = f"did not listen within {timeout}s"
        else:
            try:
                with socket.create_connection((host.address, host.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
                continue
        log = host.log.read_text(errors="replace").strip() or "(empty)"
        raise RuntimeError(f"sshd on {host.address}:{host.port} {problem}. Its log:\n{log}")


def start_ssh_cluster(
    directory: Path, addresses: tuple[str, ...] = DEFAULT_ADDRESSES
) -> SSHCluster:
    """Start one sshd per address, all at once (100 hosts take a few seconds), logging in the
    user running the tests with the cluster's client key only. Stops what it started when one
    host fails, and raises with that host's log."""
    if not Path(SSHD).exists():
        raise RuntimeError("sshd is not installed: apt-get install openssh-server")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # a non-root login must read the keys' directory
    (directory / "cache").mkdir(mode=0o755, exist_ok=True)
    if os.geteuid() == 0:  # sshd's privilege separation directory, needed when run as root
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    client_key = directory / "client_key"
    keys = [(client_key, "deploytools-tests")] + [
        (directory / f"host{index}_ed25519_key", f"host{index}")
        for index in range(1, len(addresses) + 1)
    ]
    client_public, *host_publics = _keygen(keys)
    (directory / "authorized_keys").write_text(client_public + "\n")
    cluster = SSHCluster(
        directory, client_key, directory / "known_hosts", _host_path_bin(directory)
    )
    wrapper = _clean_login_shell(directory)
    try:
        for index, address in enumerate(addresses, start=1):
            port = free_port(address)
            config = directory / f"sshd{index}.conf"
            config.write_text(_sshd_config(directory, index, address, port, cluster.path_bin))
            log = directory / f"sshd{index}.log"
            with open(log, "ab") as stderr:
                process = subprocess.Popen(
                    [*wrapper, SSHD, "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            cluster.hosts.append(SSHHost(address, port, process, keys[index][0], log))
        for host, public in zip(cluster.hosts, host_publics, strict=True):
            _wait_for_sshd(host)
            key_type, key_data = public.split()[:2]
            host.known_hosts_line = f"{host.known_hosts_name} {key_type} {key_data}"
        cluster.known_hosts.write_text(
            "".join(host.known_hosts_line + "\n" for host in cluster.hosts)
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster


# -- network faults and measurements --------------------------------------------------------------


@contextlib.contextmanager
def hung_ssh_server(address: str = "127.0.0.1") -> Iterator[int]:
    """A port on ``address`` that accepts TCP connections and never says a word: an SSH host
    whose banner never comes. Yields the port; connections are closed on exit."""
    listener = socket.create_server((address, 0))
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, name="hung-ssh-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join()
        listener.close()
        for connection in held:
            connection.close()


@dataclass
class ProxiedConnection:
    """The bytes one connection carried through a ``CountingProxy``, per direction."""

    client_to_server: int = 0
    server_to_client: int = 0
    closed: threading.Event = field(default_factory=threading.Event, repr=False)


class CountingProxy:
    """A threaded TCP proxy on loopback in front of ``address:port`` (an sshd) that counts the
    bytes of every connection in each direction: bytes on the wire without tcpdump.

    Point the client at ``proxy.address``/``proxy.port`` (``proxy.spec``) and give it a
    known_hosts line naming the proxy's port with the proxied host's key
    (``known_hosts_line``/``write_known_hosts``). Call ``wait_closed()`` before reading the
    counts of connections the client has just closed.
    """

    def __init__(self, address: str, port: int, listen_address: str = "127.0.0.1") -> None:
        self.target = (address, port)
        self._listener = socket.create_server((listen_address, 0))
        self._listener.settimeout(0.1)
        self.address: str = listen_address
        self.port: int = self._listener.getsockname()[1]
        self.connections: list[ProxiedConnection] = []
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._done = threading.Event()
        self._start(self._accept, "accept")

    def _start(self, target, name: str, *args) -> None:
        thread = threading.Thread(
            target=target, args=args, name=f"proxy-{self.port}-{name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._done.is_set():
            try:
                client = self._listener.accept()[0]
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # add no delay
            self._sockets += [client, server]
            connection = ProxiedConnection()
            self.connections.append(connection)
            self._start(self._serve, "serve", client, server, connection)

    def _serve(self, client: socket.socket, server: socket.socket, conn: ProxiedConnection):
        back = threading.Thread(
            target=self._pump, args=(server, client, conn, "server_to_client"), daemon=True
        )
        back.start()
        self._pump(client, server, conn, "client_to_server")
        back.join()
        client.close()
        server.close()
        conn.closed.set()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, conn: ProxiedConnection, counter: str):
        try:
            while data := source.recv(65536):
                setattr(conn, counter, getattr(conn, counter) + len(data))
                sink.sendall(data)
        except OSError:
            pass  # one side went away: end both directions
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            source.shutdown(socket.SHUT_RD)

    @property
    def client_to_server(self) -> int:
        """Bytes sent by clients, over every connection so far."""
        return sum(c.client_to_server for c in self.connections)

    @property
    def server_to_client(self) -> int:
        return sum(c.server_to_client for c in self.connections)

    @property
    def spec(self) -> str:
        """``user@address:port`` of the proxy, for ``deploy.hosts``."""
        return f"{pwd.getpwuid(os.geteuid()).pw_name}@{self.address}:{self.port}"

    def known_hosts_line(self, host: SSHHost) -> str:
        """``[address]:PORT`` of the proxy with the key of ``host`` (what answers behind it)."""
        key_type, key_data = host.known_hosts_line.split()[1:3]
        return f"[{self.address}]:{self.port} {key_type} {key_data}"

    def write_known_hosts(self, path: Path, host: SSHHost) -> Path:
        """Append ``known_hosts_line(host)`` to ``path`` (created if missing)."""
        with path.open("a") as known_hosts:
            known_hosts.write(self.known_hosts_line(host) + "\n")
        return path

    def wait_closed(self, timeout: float = 10.0) -> None:
        """Wait until every connection so far has closed in both directions (counts final)."""
        deadline = time.monotonic() + timeout
        for connection in list(self.connections):
            if not connection.closed.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"a connection through {self.spec} is still open")

    def close(self) -> None:
        self._done.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
