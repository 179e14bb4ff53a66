"""The SSH transport: one Fabric connection per host, host keys checked like OpenSSH does, and
a time limit on everything that waits for a host.

Fabric alone accepts any host key (paramiko's AutoAddPolicy, no known_hosts loaded). Here the
default is the opposite: keys are checked against ``deploy.known_hosts`` (and the system
``/etc/ssh/ssh_known_hosts``); ``deploy.accept_new_host_keys`` records keys of hosts not yet
known, and a changed key is always refused. ``~/.ssh/config``, ssh-agent and
``deploy.identity_file`` work through Fabric as an OpenSSH user expects. ``make_connection``
is the one place that makes such a connection, for the deploy and for ``deploytools.fleet``.

Time limits:

- connecting (TCP, SSH banner, key exchange, authentication, opening a channel):
  ``deploy.connect_timeout``;
- a host that stops answering: every ``deploy.keepalive`` seconds of silence an OpenSSH
  keepalive that requires a reply; after 3 unanswered the connection is closed, so the
  command in flight returns at once as a lost connection (one watchdog thread watches every
  connection of the process);
- a command: its ``timeout`` (default ``deploy.command_timeout``);
- an SFTP upload: no byte moving for ``deploy.command_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection
from fabric.runners import Remote
from paramiko.common import cMSG_GLOBAL_REQUEST

from ..config import Settings, Target
from ..exceptions import ConfigError, TransportError
from .transport import (
    HELD_OPEN_GRACE,
    CommandResult,
    InputFeed,
    LineCallback,
    OutputStream,
    Progress,
    keepalive_interval,
    raise_callback_error,
    time_limit,
)

SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
KEEPALIVE_REQUEST = "keepalive@openssh.com"  # OpenSSH's ServerAliveInterval request
KEEPALIVE_MISSES = 3  # OpenSSH's ServerAliveCountMax default
_known_hosts_write = threading.Lock()


class _QuickRemote(Remote):
    """invoke polls a running command every ``input_sleep`` (10 ms); 1 ms makes a short remote
    command about ten times cheaper on a fast link, at no cost in CPU worth measuring."""

    input_sleep = 0.001


class AcceptNewHostKey(paramiko.MissingHostKeyPolicy):
    """OpenSSH's ``StrictHostKeyChecking=accept-new``: trust an unknown host's key and append it
    to known_hosts. A key that differs from a known one never reaches a policy: paramiko raises
    BadHostKeyException for it."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        line = paramiko.hostkeys.HostKeyEntry([hostname], key).to_line()
        with _known_hosts_write:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self.known_hosts.open("a") as file:
                file.write(line)


# -- bytes on the wire, and the keepalive watchdog -----------------------------------------------


class MeteredSocket:
    """The connection's socket (or a gateway's channel), counting the bytes it moves: bytes
    received tell the keepalive watchdog that the host still speaks, bytes sent are the
    host's ``bytes_sent``. Everything else is the wrapped socket's own."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.bytes_received = 0
        self.bytes_sent = 0
        # Linux forgets TCP_QUICKACK after a while: set again after every read, so the host
        # never waits for our delayed ACK behind its own Nagle (about 40 ms per exchange
        # whose reply is a second small packet, as the first channel after authentication)
        self._quickack = isinstance(inner, socket.socket) and hasattr(socket, "TCP_QUICKACK")

    def recv(self, size: int, *flags: int) -> bytes:
        data = self._inner.recv(size, *flags)
        self.bytes_received += len(data)
        if self._quickack:
            with contextlib.suppress(OSError):
                self._inner.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data

    def send(self, data: bytes, *flags: int) -> int:
        sent = self._inner.send(data, *flags)
        self.bytes_sent += sent
        return sent

    def sendall(self, data: bytes, *flags: int) -> None:
        self._inner.sendall(data, *flags)
        self.bytes_sent += len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _send_keepalive(transport: paramiko.Transport) -> None:
    """Send ``keepalive@openssh.com`` with want-reply set: the reply (OpenSSH answers "request
    failed") is what proves the host alive. paramiko's own ``set_keepalive`` asks for no
    reply, and its public ``global_request`` either asks for none or blocks until the reply;
    so the message is built here and sent without waiting."""
    message = paramiko.Message()
    message.add_byte(cMSG_GLOBAL_REQUEST)
    message.add_string(KEEPALIVE_REQUEST)
    message.add_boolean(True)
    with contextlib.suppress(Exception):  # a dying transport: the watchdog decides
        transport._send_user_message(message)


class _Watch:
    """The keepalive state of one connection."""

    def __init__(self, connection: DeployConnection, meter: MeteredSocket) -> None:
        self.connection = connection
        self.transport = connection.transport
        self.meter = meter
        self.interval = connection.keepalive
        self.heard = meter.bytes_received
        self.heard_at = time.monotonic()
        self.probes = 0
        self.probed_at = 0.0
        self.sender: threading.Thread | None = None

    def check(self, now: float) -> bool:
        """Probe or give up on a silent host; False once the connection is over."""
        if not self.transport.is_active():
            return False
        if self.meter.bytes_received != self.heard:
            self.heard, self.heard_at, self.probes = self.meter.bytes_received, now, 0
            return True
        # each probe is really sent and gets a whole interval to be answered, however late
        # this thread wakes up on a busy machine
        if self.probes >= KEEPALIVE_MISSES and now - self.probed_at >= self.interval:
            self.connection.lost_reason = (
                f"{self.connection.display_name} stopped answering: no reply to "
                f"{KEEPALIVE_MISSES} SSH keepalives in {now - self.heard_at:.0f} s "
                "(deploy.keepalive)"
            )
            # closing ends the commands in flight; in a thread of its own, so that a host
            # stuck in the middle of a write cannot hold up the other hosts' keepalives
            threading.Thread(target=self.transport.close, name="ssh-close", daemon=True).start()
            return False
        if (
            self.probes < KEEPALIVE_MISSES
            and now - self.heard_at >= self.interval * (self.probes + 1)
            and now - self.probed_at >= self.interval
        ):
            self.probes += 1
            self.probed_at = now
            # a host that stopped reading can block a write: never in the watchdog's thread
            if self.sender is None or not self.sender.is_alive():
                self.sender = threading.Thread(
                    target=_send_keepalive, args=(self.transport,), name="ssh-keepalive-send"
                )
                self.sender.daemon = True
                self.sender.start()
        return True


class _Watchdog:
    """One thread for every SSH connection of the process: it wakes a few times per keepalive
    interval, looks at the byte counts, and probes or closes silent connections. Cheap at a
    hundred hosts, and idle (blocked) when no connection is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[int, _Watch] = {}
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, connection: DeployConnection, meter: MeteredSocket) -> None:
        with self._lock:
            self._watches[id(connection)] = _Watch(connection, meter)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ssh-keepalive")
                self._thread.daemon = True
                self._thread.start()
        self._changed.set()

    def unwatch(self, connection: DeployConnection) -> None:
        with self._lock:
            self._watches.pop(id(connection), None)

    def _run(self) -> None:
        while True:
            with self._lock:
                watches = list(self._watches.items())
            if not watches:
                self._changed.wait()
                self._changed.clear()
                continue
            now = time.monotonic()
            for key, watch in watches:
                if not watch.check(now):
                    with self._lock:
                        if self._watches.get(key) is watch:
                            del self._watches[key]
            tick = min(watch.interval for _, watch in watches) / 4
            self._changed.wait(min(max(tick, 0.05), 1.0))
            self._changed.clear()


_watchdog = _Watchdog()


# -- connecting ---------------------------------------------------------------------------------


class DeployConnection(Connection):
    """A Fabric ``Connection`` as deploytools makes them: its own TCP socket (TCP_NODELAY, and
    byte counts), every step of connecting bounded by ``connect_timeout``, keepalives that
    detect a host that stops answering, and failures raised as ``TransportError`` with a
    message that says what to check. Made by ``make_connection``."""

    def __init__(
        self,
        *args: Any,
        display_name: str,
        known_hosts: Path,
        keepalive: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.display_name = display_name  # as written in deploy.hosts
        self.known_hosts = known_hosts  # named in messages about host keys
        self.keepalive = keepalive
        self.meter: MeteredSocket | None = None
        self.lost_reason: str | None = None  # set when keepalives went unanswered

    def open(self) -> Any:
        if self.is_connected:
            return None
        started = time.monotonic()
        try:
            if not self.gateway:
                self.connect_kwargs["sock"] = self._dial()
            result = super().open()
        except Exception as error:
            problem = self._explain(error, time.monotonic() - started)
            self._abandon()
            if problem is None:
                raise
            raise problem from None
        finally:
            self.connect_kwargs.pop("sock", None)
        if self.keepalive and self.meter is not None:
            _watchdog.watch(self, self.meter)
        return result

    def open_gateway(self) -> Any:
        self.meter = MeteredSocket(super().open_gateway())
        return self.meter

    def close(self) -> None:
        _watchdog.unwatch(self)
        super().close()
        self._close_jump_hosts()

    def _close_jump_hosts(self) -> None:
        """Fabric leaves a ProxyJump hop's connection open when the one through it closes:
        close every hop, so no paramiko thread outlives the deploy."""
        hop: Any = self.gateway
        while isinstance(hop, Connection):
            transport = hop.client.get_transport()
            hop.client.close()
            if transport is not None and transport.is_alive():
                transport.close()
                transport.join(5)
            hop = hop.gateway

    def _dial(self) -> MeteredSocket:
        # our own socket, so TCP_NODELAY is set: paramiko leaves Nagle on, which costs about
        # 30 ms per short command
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.meter = MeteredSocket(sock)
        return self.meter

    def _abandon(self) -> None:
        """After a failed connect: close the socket and stop paramiko's thread now (it would
        otherwise wait for a banner in the background)."""
        transport = self.client.get_transport()
        self.client.close()
        if self.meter is not None:
            with contextlib.suppress(OSError):
                self.meter.close()
        if transport is not None and transport.is_alive():
            transport.close()
            transport.join(5)
        self.transport = None
        self._close_jump_hosts()

    def _explain(self, error: Exception, elapsed: float) -> TransportError | None:
        """The user-facing error for a failed connect (None: not a connection problem)."""
        name, limit = self.display_name, self.connect_timeout
        where = f"{self.host} port {self.port}"
        if isinstance(error, paramiko.BadHostKeyException):
            return TransportError(
                f"the host key of {name} has CHANGED ({error.key.get_name()}, "
                f"fingerprint {error.key.fingerprint}); this may be an attack, so nothing was "
                "done. If the server was really reinstalled, remove its old line from "
                f"{self.known_hosts} (ssh-keygen -R) and check the new key."
            )
        if isinstance(error, paramiko.SSHException):
            transport = self.client.get_transport()
            if "not found in known_hosts" in str(error):
                return TransportError(
                    f"the host key of {name} is not in {self.known_hosts}; nothing was done. "
                    "Check the key and add it (ssh-keyscan -p PORT HOST >> known_hosts), or "
                    "set deploy.accept_new_host_keys: true to trust new hosts on first use."
                )
            # paramiko says "No authentication methods available" when it had no key to try
            if isinstance(error, paramiko.AuthenticationException) or "authentication" in str(
                error
            ):
                return TransportError(
                    f"SSH authentication as {self.user} on {name} failed: check "
                    "deploy.identity_file, your ssh-agent, or the key in ~/.ssh"
                )
            if transport is not None and not transport.remote_version:
                if elapsed >= limit * 0.9:
                    return TransportError(
                        f"SSH to {name}: no SSH banner within {limit:g} s (is sshd running on "
                        f"port {self.port}?); raise deploy.connect_timeout for a slow link"
                    )
                return TransportError(
                    f"SSH to {name}: the connection closed before the SSH banner (is sshd "
                    f"running on port {self.port}, and accepting connections?)"
                )
            if transport is not None and not transport.is_authenticated() and elapsed >= limit:
                return TransportError(
                    f"SSH to {name}: the SSH handshake did not finish within {limit:g} s; "
                    "raise deploy.connect_timeout for a slow link"
                )
            return TransportError(f"SSH to {name} failed: {error}")
        if isinstance(error, TimeoutError):
            return TransportError(
                f"cannot reach {name} ({where}): no answer within {limit:g} s "
                "(deploy.connect_timeout)"
            )
        if isinstance(error, OSError):
            return TransportError(f"cannot reach {name} ({where}): {error.strerror or error}")
        return None


def identity_file(target: Target) -> str | None:
    """The target's ``identity_file``, ``~`` expanded. A ConfigError (exit 2) when it is not a
    file: paramiko would report "No such file" as if the host itself were missing."""
    if not target.identity_file:
        return None
    key = Path(target.identity_file).expanduser()
    if not key.is_file():
        raise ConfigError(
            f"deploy.identity_file {key} (for {target.name}) is not a file on this machine: "
            "point it at your SSH private key, or remove it to use ssh-agent and ~/.ssh"
        )
    return str(key)


def make_connection(target: Target, settings: Settings) -> DeployConnection:
    """A Fabric connection to ``target`` (not yet open; it connects on first use) with the
    deploy's host-key policy, identity file, connect timeout, keepalive and TCP_NODELAY.
    Commands run through it get no stdin: several hosts cannot share one terminal."""
    config = Config(overrides={"runners": {"remote": _QuickRemote}, "run": {"in_stream": False}})
    limit = float(settings.connect_timeout)
    connect_kwargs: dict[str, Any] = {
        "banner_timeout": limit,
        "auth_timeout": limit,
        "channel_timeout": limit,
    }
    key = identity_file(target)
    if key:
        connect_kwargs["key_filename"] = [key]
    connection = DeployConnection(
        host=target.hostname,
        user=target.user,
        port=target.port,
        config=config,
        connect_timeout=limit,
        connect_kwargs=connect_kwargs,
        display_name=target.name,
        known_hosts=settings.known_hosts,
        keepalive=keepalive_interval(settings),
    )
    # the same host-key policy for the host and for every jump host on the way to it (Fabric
    # makes ProxyJump hops as plain Connections, which accept any key)
    hop: Any = connection
    while isinstance(hop, Connection):
        check_host_keys(hop.client, settings)
        hop = hop.gateway
    return connection


def check_host_keys(client: paramiko.SSHClient, settings: Settings) -> None:
    """Known hosts loaded (read-only: a new key is appended by our policy, never a rewrite
    of the file); an unknown key refused, or recorded with ``accept_new_host_keys``."""
    for known in (SYSTEM_KNOWN_HOSTS, settings.known_hosts):
        if known.is_file():
            client.load_system_host_keys(str(known))
    client.set_missing_host_key_policy(
        AcceptNewHostKey(settings.known_hosts)
        if settings.accept_new_host_keys
        else paramiko.RejectPolicy()
    )


# -- running commands ----------------------------------------------------------------------------


def _pump(read: Callable[[int], bytes], stream: OutputStream) -> threading.Thread:
    """A thread feeding ``stream`` from a channel until its end (EOF or close)."""

    def run() -> None:
        with contextlib.suppress(OSError, EOFError):
            while data := read(32768):
                stream.feed(data)

    thread = threading.Thread(target=run, name=f"ssh-{stream.name}")
    thread.daemon = True
    thread.start()
    return thread


def _wait(event: threading.Event, deadline: float | None) -> bool:
    """Wait for ``event`` until ``deadline`` (monotonic; None: forever). False on timeout."""
    while not event.is_set():
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        event.wait(1.0 if remaining is None else min(remaining, 1.0))
    return True


def _drain(
    readers: list[threading.Thread], streams: tuple[OutputStream, ...], deadline: float | None
) -> bool:
    """After the exit status: wait for the end of the output while it keeps moving. False when
    it stays open without a byte for ``HELD_OPEN_GRACE`` seconds (or the deadline passes)."""
    moved, quiet_since = -1, time.monotonic()
    while any(reader.is_alive() for reader in readers):
        now = time.monotonic()
        received = sum(stream.received for stream in streams)
        if received != moved:
            moved, quiet_since = received, now
        if now - quiet_since >= HELD_OPEN_GRACE or (deadline is not None and now >= deadline):
            return False
        next(reader for reader in readers if reader.is_alive()).join(0.05)
    return True


class SSHTransport:
    """A release host over SSH. Connects on first use; every ``run_script`` is one exec request
    on that one connection, and ``put`` uses an SFTP channel of the same connection."""

    def __init__(self, target: Target, settings: Settings) -> None:
        identity_file(target)  # a missing key is refused before any host is contacted
        self.target = target
        self.settings = settings
        self.commands = 0
        self.connections = 0
        self._bytes_before = 0  # sent on connections already closed
        self._connection: DeployConnection | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._connecting = threading.Lock()  # a deploy connects ahead, while it builds

    @property
    def bytes_sent(self) -> int:
        meter = self._connection.meter if self._connection is not None else None
        return self._bytes_before + (meter.bytes_sent if meter is not None else 0)

    def connect(self) -> None:
        """Open the connection now rather than on the first command."""
        self._connect()

    def _connect(self) -> DeployConnection:
        with self._connecting:
            if self._connection is not None and self._connection.is_connected:
                return self._connection
            self.close()  # one the watchdog gave up on, if any
            connection = make_connection(self.target, self.settings)
            connection.open()
            self.connections += 1
            self._connection = connection
            return connection

    def _lost(self, connection: DeployConnection, error: BaseException | None = None) -> str:
        if connection.lost_reason:
            return connection.lost_reason
        return f"connection to {self.target.name} lost" + (f": {error}" if error else "")

    # -- Transport interface -----------------------------------------------------------------

    def run_script(
        self,
        script: str,
        *,
        timeout: float | None = None,
        on_line: LineCallback | None = None,
        feed: InputFeed | None = None,
    ) -> CommandResult:
        limit = time_limit(timeout, self.settings)
        connection = self._connect()
        self.commands += 1
        try:
            channel = connection.transport.open_session(timeout=self.settings.connect_timeout)
            channel.exec_command("sh -c " + shlex.quote(script))
            if feed is None:
                channel.shutdown_write()  # no stdin: a command reading it gets EOF, not a hang
            else:
                feed.start(channel.sendall, channel.shutdown_write)
        except (paramiko.SSHException, EOFError, OSError, AttributeError) as error:
            return CommandResult(None, "", self._lost(connection, error))
        deadline = None if limit is None else time.monotonic() + limit
        streams = (OutputStream("stdout", on_line), OutputStream("stderr", on_line))
        readers = [_pump(channel.recv, streams[0]), _pump(channel.recv_stderr, streams[1])]
        timed_out = held_open = False
        exit_code: int | None = None
        try:
            if not _wait(channel.status_event, deadline):
                timed_out = True
            elif channel.exit_status != -1:
                exit_code = channel.exit_status
                held_open = not _drain(readers, streams, deadline)
        finally:
            channel.close()  # ends the readers: what arrived so far stays readable
            for reader in readers:
                reader.join(5)
        for stream in streams:
            stream.finish()
        raise_callback_error(*streams)
        out, err = streams[0].text, streams[1].text
        if timed_out:
            note = f"timed out after {limit:g} s (the command may still run on the host)"
            return CommandResult(None, out, _append(err, note), timed_out=True)
        if exit_code is None:
            if not self._alive(connection):
                return CommandResult(None, out, _append(err, self._lost(connection)))
            # the channel closed without an exit status: sshd sends exit-signal instead,
            # which paramiko does not keep
            note = "the command ended without an exit status (killed by a signal?)"
            return CommandResult(255, out, _append(err, note))
        return CommandResult(exit_code, out, err, held_open=held_open)

    @staticmethod
    def _alive(connection: DeployConnection) -> bool:
        transport = connection.transport
        if transport is None or connection.lost_reason:
            return False
        transport.join(0.2)  # a dying transport closes its channels just before it ends
        return transport.is_active()

    def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        connection = self._connect()
        limit = time_limit(None, self.settings)
        try:
            if self._sftp is None:
                channel = connection.transport.open_session(timeout=self.settings.connect_timeout)
                # every wait of the transfer (window, acknowledgements) is bounded: a limit on
                # inactivity, not on the whole upload
                channel.settimeout(limit)
                channel.invoke_subsystem("sftp")
                self._sftp = paramiko.SFTPClient(channel)
            self._sftp.put(os.fspath(local), remote, callback=progress, confirm=True)
        except (OSError, paramiko.SSHException, EOFError) as error:
            self._close_sftp()
            if connection.lost_reason:
                reason = connection.lost_reason
            elif isinstance(error, TimeoutError):
                reason = f"no progress for {limit:g} s (deploy.command_timeout)"
            else:
                reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise TransportError(
                f"uploading to {self.target.name}:{remote} failed: {reason}"
            ) from None

    def _close_sftp(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None

    def reconnect(self) -> None:
        self.close()

    def close(self) -> None:
        self._close_sftp()
        if self._connection is not None:
            self._connection.close()
            meter = self._connection.meter
            self._bytes_before += meter.bytes_sent if meter is not None else 0
            self._connection = None


def _append(text: str, line: str) -> str:
    """``text`` (a command's stderr) with one more line: what deploytools saw."""
    if text and not text.endswith("\n"):
        text += "\n"
    return f"{text}{line}\n"
