"""SSHSession against an in-process paramiko server (no QEMU)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from lab.deadline import Deadline
from lab.errors import TransportError
from lab.guest.ssh import SSHSession
from lab.image.keys import ensure_keys


class _Server(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey) -> None:
        self.client_key = client_key
        self.commands: list[str] = []

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL if key == self.client_key else paramiko.AUTH_FAILED

    def get_allowed_auths(self, username):
        return "publickey"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        command = command.decode()
        self.commands.append(command)
        threading.Thread(target=self._execute, args=(channel, command), daemon=True).start()
        return True

    @staticmethod
    def _execute(channel: paramiko.Channel, command: str) -> None:
        # The "guest" is this host's shell: the command string is exactly what sshd would get.
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.PIPE)
        stdin = b""
        while True:
            chunk = channel.recv(65536)
            if not chunk:
                break
            stdin += chunk
        out, err = proc.communicate(stdin)
        try:
            channel.sendall(out)
            channel.sendall_stderr(err)
            channel.send_exit_status(proc.returncode)
            channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the connection was dropped under the command (as a dead link does)


class FakeGuestSSH:
    """A listening socket that serves SSH with the lab's guest host key."""

    def __init__(self, keys, host_key_file: Path | None = None) -> None:
        self.host_key = paramiko.PKey.from_path(host_key_file or keys.host_key)
        self.client_key = paramiko.PKey.from_path(keys.client_key)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self.server = _Server(self.client_key)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            try:
                transport.start_server(server=self.server)
            except (paramiko.SSHException, OSError, EOFError):
                # A client that refuses the host key hangs up mid-negotiation: that is the test, not an error.
                # paramiko raises EOFError or SSHException depending on where in the key exchange the
                # hang-up lands (the EOFError once surfaced as a thread exception in the next test).
                transport.close()
                continue
            self.transports.append(transport)

    def drop_connections(self) -> None:
        for transport in self.transports:
            transport.close()

    def close(self) -> None:
        self.drop_connections()
        self.listener.close()


@pytest.fixture
def keys(tmp_path):
    return ensure_keys(tmp_path / "keys")


@pytest.fixture
def server(keys):
    fake = FakeGuestSSH(keys)
    yield fake
    fake.close()


def _session(keys, server) -> SSHSession:
    session = SSHSession("127.0.0.1", server.port, keys.client_key, keys.known_hosts, connect_timeout=10)
    session.connect()
    return session


def test_run_returns_status_and_both_streams(keys, server):
    session = _session(keys, server)
    result = session.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_status, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    session.close()


def test_arguments_are_quoted_at_the_boundary(keys, server):
    session = _session(keys, server)
    tricky = "a b; echo INJECTED $(id) 'q'"
    result = session.run(["printf", "%s", tricky])
    assert result.stdout.decode() == tricky
    session.close()


def test_large_output_on_both_streams_does_not_deadlock(keys, server):
    session = _session(keys, server)
    result = session.run(["sh", "-c", "head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2"], timeout=60)
    assert len(result.stdout) == 3_000_000 and len(result.stderr) == 2_000_000
    session.close()


def test_stdin_is_delivered(keys, server):
    session = _session(keys, server)
    assert session.run(["cat"], stdin=b"hello").stdout == b"hello"
    session.close()


def test_string_commands_are_refused(keys, server):
    session = _session(keys, server)
    with pytest.raises(TypeError):
        session.run("ls -l")  # type: ignore[arg-type]
    session.close()


def test_unknown_host_key_is_rejected(tmp_path, keys):
    other = ensure_keys(tmp_path / "other")
    impostor = FakeGuestSSH(keys, host_key_file=other.host_key)
    try:
        session = SSHSession("127.0.0.1", impostor.port, keys.client_key, keys.known_hosts, connect_timeout=10)
        with pytest.raises(TransportError, match="does not match|not found in known_hosts"):
            session.connect()
    finally:
        impostor.close()


def test_reconnects_after_the_connection_drops(keys, server):
    session = _session(keys, server)
    assert session.run(["true"]).ok
    server.drop_connections()
    # The next command notices the dead transport and reconnects once.
    for _ in range(50):
        if not session.connected:
            break
        threading.Event().wait(0.05)
    assert session.run(["echo", "again"]).stdout == b"again\n"
    assert session.reconnects == 1
    session.close()


def test_a_drop_not_yet_noticed_still_reconnects_once(keys, server, monkeypatch):
    session = _session(keys, server)
    assert session.run(["true"]).ok
    server.drop_connections()
    # The transport still looks alive when the next command starts: opening its channel fails,
    # and that command reconnects instead of failing.
    calls = []
    real = type(session).connected

    def stale_then_real(self):
        calls.append(1)
        return True if len(calls) == 1 else real.fget(self)

    monkeypatch.setattr(type(session), "connected", property(stale_then_real))
    for _ in range(50):
        if not real.fget(session):
            break
        threading.Event().wait(0.05)
    assert session.run(["echo", "again"]).stdout == b"again\n"
    assert session.reconnects == 1
    session.close()


def test_timeout_marks_the_result(keys, server):
    session = _session(keys, server)
    result = session.run(["sleep", "5"], timeout=0.5)
    assert result.extra["timed_out"] and result.exit_status == -1
    session.close()


def test_interrupt_ends_a_connect_waiting_for_the_banner_in_another_thread(tmp_path):
    keys = ensure_keys(tmp_path / "keys")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts (in the kernel) and never says a word: a held sshd
    session = SSHSession("127.0.0.1", silent.getsockname()[1], keys.client_key, keys.known_hosts)
    errors = []

    def connect():
        try:
            session.connect(Deadline(30, "test connect"))
        except TransportError as exc:
            errors.append(exc)

    thread = threading.Thread(target=connect)
    thread.start()
    try:
        while session._connecting is None and thread.is_alive():
            time.sleep(0.01)
        session.interrupt()
        thread.join(10)
        assert not thread.is_alive() and len(errors) == 1
        with pytest.raises(TransportError, match="interrupted"):
            session.connect(Deadline(5, "test connect"))  # an interrupted session stays given up
    finally:
        silent.close()


def test_abort_from_another_thread_ends_the_command(keys, server):
    session = _session(keys, server)
    abort = threading.Event()
    threading.Timer(0.5, abort.set).start()
    started = time.monotonic()
    result = session.run(["sleep", "20"], timeout=30, abort=abort)
    assert time.monotonic() - started < 5
    assert result.extra == {"timed_out": False, "aborted": True} and result.exit_status == -1
    assert session.run(["echo", "next"]).stdout == b"next\n"  # the session is still usable
    session.close()
