"""The fork server (lab/guestside/forkserver.py) with its real client (images/init/cnlab-fork.c), on the host."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.image.build import images_dir

GUESTSIDE = Path(__file__).resolve().parents[3] / "lab" / "guestside"
PROGRAM = '''\
import os, sys, time
IMPORTED_IN = os.getpid()  # a forked child of the server still holds the server's import


def main():
    data = sys.stdin.read()
    print(f"imported-in-self={IMPORTED_IN == os.getpid()} argv={sys.argv[1:]} stdin={data!r} "
          f"cwd={os.getcwd()} env={os.environ.get('CNLAB_TEST_WORD')} sid={os.getsid(0) == os.getpid()}")
    print("to stderr", file=sys.stderr)
    if "sleep" in sys.argv:
        open(sys.argv[-1], "w").write(str(os.getpid()))
        time.sleep(60)
    if "kill" in sys.argv:
        os.kill(os.getpid(), signal.SIGKILL)
    if "raise" in sys.argv:
        raise ValueError("the program failed")
    return 3


import signal  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
'''

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or not Path("/usr/bin/python3").exists(),
                                reason="needs gcc and /usr/bin/python3")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    out = tmp_path_factory.mktemp("client") / "cnlab-fork"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                    str(images_dir() / "init" / "cnlab-fork.c")], check=True)
    return out


@pytest.fixture
def lib(tmp_path):
    folder = tmp_path / "py"
    folder.mkdir()
    shutil.copy(GUESTSIDE / "forkserver.py", folder / "forkserver.py")
    (folder / "agent.py").write_text(PROGRAM)
    (folder / "other.py").write_text(PROGRAM)
    return folder


@pytest.fixture
def server(lib, tmp_path):
    sock = tmp_path / "fork.sock"
    started = subprocess.run([sys.executable, "-S", str(lib / "forkserver.py"), "--daemon", "--socket", str(sock)],
                             capture_output=True, text=True, timeout=30)
    assert started.returncode == 0 and "listening" in started.stderr, started.stderr
    assert "preload failed: none" in started.stderr
    pid = int(re.search(r"\(pid (\d+)\)", started.stderr).group(1))
    yield sock
    os.kill(pid, signal.SIGKILL)


def _run(client, sock, *args, stdin="plan", cwd=None, **kw):
    env = {"CNLAB_FORK_SOCKET": str(sock) if sock else "", "CNLAB_TEST_WORD": "hello", "PATH": os.environ["PATH"]}
    return subprocess.run([str(client), *map(str, args)], input=stdin, capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=30, **kw)


def test_a_preloaded_program_runs_as_a_fork_with_the_clients_streams_folder_and_environment(client, server, lib,
                                                                                          tmp_path):
    done = _run(client, server, lib / "agent.py", "a b", "c", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == (f"imported-in-self=False argv=['a b', 'c'] stdin='plan' cwd={tmp_path} "
                                   "env=hello sid=True")
    assert done.stderr == "to stderr\n"


def test_any_other_program_runs_in_a_fork_too(client, server, lib):
    done = _run(client, server, lib / "other.py")
    assert done.returncode == 3 and "imported-in-self=True" in done.stdout and "sid=True" in done.stdout


def test_a_forked_program_finds_the_preloaded_library_modules_imported(client, server, lib):
    (lib / "probe.py").write_text("import sys\nprint(sorted(m for m in ('argparse', 'gettext') if m in sys.modules))\n")
    assert _run(client, server, lib / "probe.py").stdout == "['argparse', 'gettext']\n"


def test_an_uncaught_exception_exits_1_with_its_traceback(client, server, lib):
    done = _run(client, server, lib / "agent.py", "raise")
    assert done.returncode == 1
    assert "ValueError: the program failed" in done.stderr and "Traceback" in done.stderr


def test_a_child_killed_by_a_signal_kills_the_client_the_same_way(client, server, lib):
    assert _run(client, server, lib / "agent.py", "kill").returncode == -signal.SIGKILL


def _sleeping_child(client, server, lib, tmp_path):
    """A client whose forked child sleeps; the client and the child's pid (once the child wrote it)."""
    pidfile = tmp_path / "child.pid"
    proc = subprocess.Popen([str(client), str(lib / "agent.py"), "sleep", str(pidfile)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, env={"CNLAB_FORK_SOCKET": str(server),
                                                            "PATH": os.environ["PATH"]})
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc, int(pidfile.read_text())


def test_sigterm_to_the_client_reaches_the_child(client, server, lib, tmp_path):
    proc, _child = _sleeping_child(client, server, lib, tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM


def test_a_client_that_dies_hangs_up_on_its_child(client, server, lib, tmp_path):
    proc, child = _sleeping_child(client, server, lib, tmp_path)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{child}").exists(), "the child outlived its client"


def test_without_a_server_the_client_runs_python_itself(client, lib, tmp_path):
    done = _run(client, tmp_path / "nobody-listens.sock", lib / "agent.py", "x")
    assert done.returncode == 3 and "imported-in-self=True" in done.stdout and "sid=False" in done.stdout



def test_a_child_that_cannot_even_start_exits_1_and_the_server_serves_on(client, server, lib, tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.Popen([str(client), str(lib / "agent.py")], cwd=gone, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"CNLAB_FORK_SOCKET": str(server), "PATH": os.environ["PATH"]})
    gone.rmdir()  # races the request: the child cannot enter the folder, or the client cannot name it
    out, err = proc.communicate(timeout=20)
    assert proc.returncode in (1, 3), err  # 3: the client ran python3 itself in the deleted folder
    if proc.returncode == 1:
        assert "FileNotFoundError" in err
    done = _run(client, server, lib / "agent.py")
    assert done.returncode == 3 and "imported-in-self=False" in done.stdout


def test_a_request_for_a_folder_that_is_gone_ends_in_exit_1_with_the_reason(tmp_path, capsys):
    from lab.guestside import forkserver

    request = forkserver.Request([0, 1, 2], str(tmp_path / "gone"), [str(tmp_path / "agent.py")], {})
    assert forkserver._run(request) == 1
    assert "FileNotFoundError" in capsys.readouterr().err


def _raw_request(sock_path, program):
    """A request as cnlab-fork sends it, from a socket of this test's own (streams: this process's)."""
    import array
    import socket
    import struct

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(str(sock_path))
    data = struct.pack("=II", 1, 0) + b"/\0" + str(program).encode() + b"\0"
    conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
    return conn


def test_clients_that_leave_early_or_stall_cost_nobody_else(client, server, lib):
    import socket

    _raw_request(server, lib / "agent.py").close()  # gone before the "pid" reply
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stalled.connect(str(server))  # connected, says nothing
    try:
        done = _run(client, server, lib / "agent.py", stdin="")  # would wait for the staller before
        assert done.returncode == 3 and "imported-in-self=False" in done.stdout, done.stderr
    finally:
        stalled.close()
    assert _run(client, server, lib / "other.py").returncode == 3


def test_a_malformed_request_is_refused_and_the_client_would_run_python_itself(server):
    import socket

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(str(server))
    conn.send(b"no streams, no header")
    conn.settimeout(10)
    assert conn.recv(64).startswith(b"refused ")
    conn.close()


def test_a_program_runs_from_its_byte_code_while_that_matches_its_source(tmp_path):
    import importlib.util
    from importlib._bootstrap_external import _code_to_hash_pyc

    program = tmp_path / "prog.py"
    program.write_text('print("from the source")\n')
    # byte code that says something else, stamped with the source's hash: only running it prints "byte code"
    code = compile('print("from the byte code")\n', str(program), "exec")
    cached = Path(importlib.util.cache_from_source(str(program)))
    cached.parent.mkdir()
    cached.write_bytes(_code_to_hash_pyc(code, importlib.util.source_hash(program.read_bytes()), checked=True))
    runner = (f"import sys; sys.path.insert(0, {str(GUESTSIDE)!r}); import forkserver; "
              "forkserver.run_program(sys.argv[1])")

    def run() -> str:
        return subprocess.run([sys.executable, "-S", "-c", runner, str(program)], capture_output=True, text=True,
                              check=True).stdout

    assert run() == "from the byte code\n"
    program.write_text('print("from the changed source", __name__)\n')
    assert run() == "from the changed source __main__\n"  # the byte code no longer matches the source
