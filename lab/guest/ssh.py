"""SSH to a guest with paramiko: pinned host key, argv commands, SFTP.

The guest's host key is pinned from the lab's known_hosts (``RejectPolicy``:
an unknown key is refused, never accepted).  Commands are argument lists,
quoted once at this boundary.  Output is drained from both streams while the
command runs, so a large output cannot deadlock it; the exit status is read
only after the streams are drained.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from lab.command import CommandResult, as_argv, quote_argv
from lab.deadline import Deadline
from lab.errors import TransportError
from lab.image.keys import KNOWN_HOSTS_NAME

#: How often a command's wait looks at its ``abort`` event, in seconds.
ABORT_POLL_S = 0.5

__all__ = ["SSHSession"]

log = logging.getLogger(__name__)

OutputSink = Callable[[str, bytes], None]
SocketOpener = Callable[[float], socket.socket]


class SSHSession:
    """One SSH connection to one guest, reconnecting when it drops."""

    def __init__(self, host: str, port: int, key_file: Path, known_hosts: Path, user: str = "root",
                 keepalive: int = 5, connect_timeout: float = 30.0, dead_link_s: float = 0.0,
                 open_socket: SocketOpener | None = None) -> None:
        """``dead_link_s`` > 0: a connection whose data stays unacknowledged that long fails
        (``TCP_USER_TIMEOUT``; the keepalives make sure there is data).  ``open_socket(timeout)``
        replaces the plain TCP connect, e.g. to connect from inside a network namespace."""
        self.host = host
        self.port = port
        self.user = user
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.dead_link_s = dead_link_s
        self._open_socket = open_socket or (lambda timeout: socket.create_connection((host, port), timeout=timeout))
        self._pkey = paramiko.PKey.from_path(key_file)
        self._host_key = self._pinned_key(known_hosts)
        self._client: paramiko.SSHClient | None = None
        self._connecting: socket.socket | None = None
        self._interrupted = False
        self.reconnects = 0

    @staticmethod
    def _pinned_key(known_hosts: Path) -> paramiko.PKey:
        keys = paramiko.HostKeys(str(known_hosts))
        entry = keys.lookup(KNOWN_HOSTS_NAME)
        if not entry:
            raise TransportError(f"{known_hosts} has no key for {KNOWN_HOSTS_NAME}")
        return next(iter(entry.values()))

    # ----------------------------------------------------------- connection
    def connect(self, deadline: Deadline | None = None) -> None:
        """Connect (or reconnect) before ``deadline``."""
        deadline = deadline or Deadline(self.connect_timeout, f"SSH to {self.host}:{self.port}")
        self.close()
        client = paramiko.SSHClient()
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        client.get_host_keys().add(name, self._host_key.get_name(), self._host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        remaining = max(deadline.remaining(), 1.0)
        try:
            sock = self._connecting = self._open_socket(remaining)
            if self._interrupted:
                sock.close()
                raise TransportError(f"SSH to {self.host}:{self.port} was interrupted")
            if self.dead_link_s > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.dead_link_s * 1000))
            client.connect(
                self.host, port=self.port, username=self.user, pkey=self._pkey, sock=sock,
                look_for_keys=False, allow_agent=False, timeout=remaining,
                banner_timeout=remaining, auth_timeout=remaining,
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:  # EOFError: the peer (or interrupt) closed it
            client.close()
            why = str(exc) or f"{type(exc).__name__} (the connection was closed)"
            raise TransportError(f"SSH to {self.host}:{self.port} failed: {why}") from exc
        finally:
            self._connecting = None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(self.keepalive)
        self._client = client

    def interrupt(self) -> None:
        """Make a :meth:`connect` running in another thread fail now, and every later one (it raises
        ``TransportError``): for a session given up while it connects."""
        self._interrupted = True
        sock = self._connecting
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected yet, or already closed: the connect fails on its own

    @property
    def connected(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def _transport(self) -> paramiko.Transport:
        if not self.connected:
            log.info("SSH to %s:%s dropped; reconnecting", self.host, self.port)
            self.reconnects += 1
            self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        assert transport is not None
        return transport

    def _open_session(self) -> paramiko.Channel:
        """A new session channel; a transport that died unnoticed gets one reconnect (nothing ran yet)."""
        try:
            return self._transport().open_session()
        except (paramiko.SSHException, EOFError):
            if self.connected:
                raise
        return self._transport().open_session()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -------------------------------------------------------------- commands
    def run(self, argv: list[str], timeout: float | None = None, stdin: bytes | None = None,
            sink: OutputSink | None = None, check: bool = False,
            abort: threading.Event | None = None) -> CommandResult:
        """Run ``argv`` in the guest; ``sink(stream, chunk)`` sees output as it comes.  Once ``abort`` is set
        (by another thread) the command is left as a timed-out one is: its channel closed, status -1, the
        output so far kept, ``extra["aborted"]`` true."""
        argv = as_argv(argv)
        started = time.monotonic()
        try:
            channel = self._open_session()
            channel.exec_command(quote_argv(argv))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"cannot start {argv[0]} over SSH: {exc}") from exc
        if stdin is not None:
            channel.sendall(stdin)
        channel.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = Deadline(timeout, f"{argv[0]} in the guest") if timeout else None
        timed_out = aborted = False
        try:
            while True:
                drained = self._drain(channel, out, err, sink)
                if channel.exit_status_ready() and not drained and not channel.recv_ready() \
                        and not channel.recv_stderr_ready():
                    break
                if channel.closed and not drained:
                    break
                wait = deadline.remaining() if deadline else 5.0
                if deadline and deadline.expired():
                    timed_out = True
                    break
                if abort is not None and abort.is_set():
                    aborted = True
                    self._drain(channel, out, err, sink)  # what arrived since the last look
                    break
                select.select([channel], [], [], min(wait, 5.0 if abort is None else ABORT_POLL_S))
            status = -1 if timed_out or aborted else channel.recv_exit_status()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransportError(f"SSH failed while running {argv[0]}: {exc}") from exc
        finally:
            channel.close()
        if status == -1 and not timed_out and not aborted and not self.connected:
            raise TransportError(f"SSH connection lost while running {argv[0]}")
        result = CommandResult(argv, status, bytes(out), bytes(err), time.monotonic() - started,
                               {"timed_out": timed_out, "aborted": aborted})
        return result.check() if check else result

    @staticmethod
    def _drain(channel: paramiko.Channel, out: bytearray, err: bytearray, sink: OutputSink | None) -> bool:
        got = False
        while channel.recv_ready():
            chunk = channel.recv(65536)
            if not chunk:
                break
            out += chunk
            got = True
            if sink:
                sink("stdout", chunk)
        while channel.recv_stderr_ready():
            chunk = channel.recv_stderr(65536)
            if not chunk:
                break
            err += chunk
            got = True
            if sink:
                sink("stderr", chunk)
        return got

    # ----------------------------------------------------------------- files
    def put(self, local: Path, remote: str, mode: int | None = None) -> None:
        """Copy a local file into the guest."""
        try:
            with self._transport().open_sftp_client() as sftp:
                sftp.put(str(local), remote)
                if mode is not None:
                    sftp.chmod(remote, mode)
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"copying {local} to guest:{remote} failed: {exc}") from exc

    def get(self, remote: str, local: Path) -> None:
        """Copy a file out of the guest."""
        try:
            with self._transport().open_sftp_client() as sftp:
                sftp.get(remote, str(local))
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"copying guest:{remote} to {local} failed: {exc}") from exc
