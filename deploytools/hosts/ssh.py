"""The SSH transport: one Fabric connection per host, host keys checked like OpenSSH does.

Fabric alone accepts any host key (paramiko's AutoAddPolicy, no known_hosts loaded). Here the
default is the opposite: keys are checked against ``deploy.known_hosts`` (and the system
``/etc/ssh/ssh_known_hosts``); ``deploy.accept_new_host_keys`` records keys of hosts not yet
known, and a changed key is always refused. ``~/.ssh/config``, ssh-agent and
``deploy.identity_file`` work through Fabric as an OpenSSH user expects.
"""

from __future__ import annotations

import os
import shlex
import socket
import threading
from pathlib import Path

import paramiko
from fabric import Config, Connection
from fabric.runners import Remote

from ..config import Settings, Target
from ..exceptions import TransportError
from .transport import CommandResult, Progress

SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
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


class SSHTransport:
    """A release host over SSH. Connects on first use; every ``run_script`` is one exec request
    on that one connection, and ``put`` uses an SFTP channel of the same connection."""

    def __init__(self, target: Target, settings: Settings) -> None:
        self.target = target
        self.settings = settings
        self.commands = 0
        self.connections = 0
        self._connection: Connection | None = None

    # -- connecting ---------------------------------------------------------------------------

    def _connect(self) -> Connection:
        if self._connection is not None and self._connection.is_connected:
            return self._connection
        target, settings = self.target, self.settings
        config = Config(overrides={"runners": {"remote": _QuickRemote}})
        connect_kwargs: dict = {}
        if target.identity_file:
            connect_kwargs["key_filename"] = [str(Path(target.identity_file).expanduser())]
        connection = Connection(
            host=target.hostname,
            user=target.user,
            port=target.port,
            config=config,
            connect_timeout=int(settings.connect_timeout),
            connect_kwargs=connect_kwargs,
        )
        client = connection.client
        for known in (SYSTEM_KNOWN_HOSTS, settings.known_hosts):
            if known.is_file():
                # loaded read-only: a new key is appended by our policy, never a rewrite of the file
                client.load_system_host_keys(str(known))
        client.set_missing_host_key_policy(
            AcceptNewHostKey(settings.known_hosts)
            if settings.accept_new_host_keys
            else paramiko.RejectPolicy()
        )
        try:
            if not connection.gateway:
                # our own socket, so TCP_NODELAY is set: paramiko leaves Nagle on, which costs
                # about 30 ms per short command
                sock = socket.create_connection(
                    (connection.host, connection.port), timeout=settings.connect_timeout
                )
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection.connect_kwargs["sock"] = sock
            connection.open()
        except paramiko.BadHostKeyException as error:
            connection.close()
            raise TransportError(
                f"the host key of {target.name} has CHANGED ({error.key.get_name()}, "
                f"fingerprint {error.key.fingerprint}); this may be an attack, so nothing was "
                "done. "
                f"If the server was really reinstalled, remove its old line from "
                f"{settings.known_hosts} (ssh-keygen -R) and check the new key."
            ) from None
        except paramiko.SSHException as error:
            connection.close()
            if "not found in known_hosts" in str(error):
                raise TransportError(
                    f"the host key of {target.name} is not in {settings.known_hosts}; nothing "
                    "was done. Check the key and add it (ssh-keyscan -p PORT HOST >> known_hosts), "
                    "or set deploy.accept_new_host_keys: true to trust new hosts on first use."
                ) from None
            # paramiko says "No authentication methods available" when it had no key to try
            if isinstance(error, paramiko.AuthenticationException) or "authentication" in str(
                error
            ):
                raise TransportError(
                    f"SSH authentication as {connection.user} on {target.name} failed: check "
                    "deploy.identity_file, your ssh-agent, or the key in ~/.ssh"
                ) from None
            raise TransportError(f"SSH to {target.name} failed: {error}") from None
        except OSError as error:
            connection.close()
            raise TransportError(
                f"cannot reach {target.name} ({connection.host} port {connection.port}): "
                f"{error.strerror or error}"
            ) from None
        transport = connection.transport
        if transport is not None:
            transport.set_keepalive(15)
        self.connections += 1
        self._connection = connection
        return connection

    # -- Transport interface -----------------------------------------------------------------

    def run_script(self, script: str, *, timeout: float | None = None) -> CommandResult:
        connection = self._connect()
        self.commands += 1
        try:
            result = connection.run(
                "sh -c " + shlex.quote(script),
                hide=True,
                warn=True,
                in_stream=False,
                pty=False,
                timeout=timeout,
            )
        except (paramiko.SSHException, EOFError, OSError) as error:
            return CommandResult(None, "", f"connection to {self.target.name} lost: {error}")
        # an exec channel closed without an exit status means the connection died under it
        if result.exited == -1:
            return CommandResult(None, result.stdout, result.stderr)
        return CommandResult(result.exited, result.stdout, result.stderr)

    def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        connection = self._connect()
        try:
            connection.sftp().put(os.fspath(local), remote, callback=progress, confirm=True)
        except (OSError, paramiko.SSHException, EOFError) as error:
            reason = getattr(error, "strerror", None) or error
            raise TransportError(
                f"uploading to {self.target.name}:{remote} failed: {reason}"
            ) from None

    def reconnect(self) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
