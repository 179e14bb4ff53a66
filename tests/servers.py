"""Throwaway real servers on loopback: PostgreSQL, Redis and OpenSSH, from the system binaries.

Used by the pytest fixtures in ``conftest.py`` and by the scripts in ``bench/``. Every server
listens on a free loopback port, keeps its files in a directory of its own, and is stopped
(with its children) by ``stop()``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
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


def start_postgres(directory: Path) -> PostgresServer:
    """initdb + pg_ctl start in ``directory`` (created 0755 and owned by postgres when root)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data = directory / "data"
    port = free_port()
    run_as = _as_postgres_user()
    subprocess.run(
        [
            *run_as,
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(directory / "log"),
            "-w",
            "-o",
            f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    return PostgresServer(directory, port)


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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port)
    except RuntimeError:
        _stop_process(process)
        raise
    return RedisServer(process, port)


@dataclass
class SSHHost:
    """One sshd "host" on its own loopback address, with its own host key."""

    address: str
    port: int
    process: subprocess.Popen
    host_key: Path
    known_hosts_line: str = ""

    @property
    def spec(self) -> str:
        """The ``user@host:port`` string deploytools takes in ``deploy.hosts``."""
        return f"{pwd.getpwuid(os.geteuid()).pw_name}@{self.address}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return f"[{self.address}]:{self.port}"

    def session_pids(self) -> list[int]:
        """The per-connection sshd children of the listener (one per open SSH connection)."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in out.split()]

    def kill_sessions(self) -> list[int]:
        """Drop every open SSH connection to this host, as a network failure would."""
        pids = self.session_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def in_namespace(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's mount namespace (a mount made there is seen by
        this host alone)."""
        return ["nsenter", "-t", str(self.process.pid), "-m", "--", *argv]

    def stop(self) -> None:
        self.kill_sessions()
        _stop_process(self.process)


@dataclass
class SSHCluster:
    """Several sshd hosts sharing one client key and one known_hosts file."""

    directory: Path
    client_key: Path
    known_hosts: Path
    hosts: list[SSHHost] = field(default_factory=list)

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return (path.with_suffix(".pub")).read_text().strip()


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


def start_ssh_cluster(
    directory: Path, addresses: tuple[str, ...] = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
) -> SSHCluster:
    """Start one sshd per address (root login with the cluster's client key only)."""
    if not Path(SSHD).exists():
        raise RuntimeError("sshd is not installed: apt-get install openssh-server")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    if os.geteuid() == 0:  # sshd's privilege separation directory, needed when run as root
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    client_key = directory / "client_key"
    authorized = directory / "authorized_keys"
    authorized.write_text(_keygen(client_key, "deploytools-tests") + "\n")
    cluster = SSHCluster(directory, client_key, directory / "known_hosts")
    try:
        for index, address in enumerate(addresses, start=1):
            host_key = directory / f"host{index}_ed25519_key"
            public = _keygen(host_key, f"host{index}")
            port = free_port(address)
            config = directory / f"sshd{index}.conf"
            config.write_text(
                f"Port {port}\n"
                f"ListenAddress {address}\n"
                f"HostKey {host_key}\n"
                f"AuthorizedKeysFile {authorized}\n"
                f"PidFile {directory / f'sshd{index}.pid'}\n"
                "StrictModes no\n"
                "UsePAM no\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "PermitRootLogin prohibit-password\n"
                "MaxStartups 100:30:200\n"
                "MaxSessions 50\n"
                "LogLevel ERROR\n"
                "Subsystem sftp internal-sftp\n"
            )
            process = subprocess.Popen(
                [*_clean_login_shell(directory), SSHD, "-D", "-e", "-f", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=open(directory / f"sshd{index}.log", "ab"),  # noqa: SIM115
            )
            host = SSHHost(address, port, process, host_key)
            cluster.hosts.append(host)
            wait_for_port(address, port)
            key_type, key_data = public.split()[:2]
            host.known_hosts_line = f"{host.known_hosts_name} {key_type} {key_data}"
        cluster.known_hosts.write_text(
            "".join(host.known_hosts_line + "\n" for host in cluster.hosts)
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster
