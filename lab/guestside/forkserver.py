"""A fork server: a guest Python that has already imported the lab's guest programs, and forks them on request.

A restored guest starts with its TCG translation cache empty, and a Python started from scratch then spends
most of a second on its own start and on importing ``json``, ``re``, ``subprocess`` and the agent's modules
before the agent does anything.  The guest whose state is saved starts this server (``--daemon`` returns once
it listens), so every guest restored from that state holds a Python with those imports done.  The client,
``cnlab-fork PROGRAM ARG...`` (``images/init/cnlab-fork.c``), passes its stdin, stdout and stderr, working
folder, environment and arguments over ``SOCKET``; the server forks, and the child becomes the program:
a session of its own, the client's three streams, folder and environment, ``sys.argv``, then the
preloaded module's ``main()`` (or :func:`run_program` for any other file).  The client forwards SIGTERM, SIGINT
and SIGHUP to the child's process group and exits as the child did.  Without a server (a guest that
booted cold) the client runs ``python3 -S PROGRAM ARG...`` itself, so callers need not know.

Every child reseeds Python's ``random`` at the fork (the standard library does so), and forks happen only
on requests, which reach a restored guest after its CRNG is reseeded.  The children share the server's
hash seed, as all guests restored from one state do, and the interpreter settings it started with
(``PYTHON*`` variables in a request do not change them).  A child ends with ``os._exit`` once the program
returns: non-daemon threads and ``atexit`` handlers are not waited for (the agent has neither).  A client
that goes away before its child ends (a timed-out job killed) gets its child's session killed.

The socket (``SOCK_SEQPACKET``) is its user's only (mode 0600, peer credentials checked).  A request is one
message: ``u32 argc, u32 envc`` then NUL-terminated strings: the folder, ``argc`` arguments (the program first),
``envc`` environment entries; the three streams ride along as ``SCM_RIGHTS``.  Replies are messages:
``pid N``, then ``exit STATUS`` (a wait status) when the child ends; or ``refused ERRNO`` if the request
was malformed or the server could not fork, and the client then runs the program itself.

Standard library only.
"""

import array
import errno
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback

SOCKET = "/run/cnlab/forkserver.sock"
#: Programs forked with their module already imported: file name -> module (it must have ``main()``).
PRELOAD = {"agent.py": "agent"}
#: Standard-library modules the forked programs import beyond the agent's own: ``argparse`` (with ``gettext``
#: and ``locale`` behind it) for the consumers (``consume.py``) and ``cnlabctl.py``.
PRELOAD_LIBRARY = ("argparse",)
#: A connection that sends no request within this many seconds is dropped.
REQUEST_S = 10.0
#: The largest request (arguments and environment together): one SOCK_SEQPACKET message.
MAX_REQUEST = 64 << 10
_HEADER = struct.Struct("=II")


class Request:
    """One client's request: its streams (fds), folder, arguments and environment."""

    def __init__(self, fds, folder, argv, env):
        self.fds = fds
        self.folder = folder
        self.argv = argv
        self.env = env


def read_request(conn):
    """The request on ``conn`` (a connected Unix socket), or None if it is malformed or from another user
    than this server's (the socket's mode lets only that user connect anyway)."""
    uid = struct.unpack("=iII", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
    fds = array.array("i")
    data, ancillary, _, _ = conn.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    request = None
    if uid == os.geteuid() and len(fds) == 3 and len(data) >= _HEADER.size:
        argc, envc = _HEADER.unpack_from(data)
        strings = [s.decode("utf-8", "surrogateescape") for s in data[_HEADER.size:].split(b"\0")[:-1]]
        if argc >= 1 and len(strings) == 1 + argc + envc:
            env = dict(entry.split("=", 1) for entry in strings[1 + argc:] if "=" in entry)
            request = Request(list(fds), strings[0], strings[1:1 + argc], env)
    if request is None:
        for fd in fds:
            os.close(fd)
    return request


def run_program(path):
    """Run the Python file ``path`` as ``__main__`` from its byte code in ``__pycache__`` where that matches the
    source (the lab ships a hash-checked ``.pyc`` beside each guest program, ``lab.guest.files``), else from the
    source: compiling a program cost a restored TCG guest 0.1 s, ``runpy.run_path`` compiles every time."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("__main__", path) if path.endswith(".py") else None
    if spec is None:
        import runpy

        runpy.run_path(path, run_name="__main__")
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["__main__"] = module
    spec.loader.exec_module(module)


def exit_code(exc):
    """What ``python3 PROGRAM`` exits with after ``SystemExit(exc.code)``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def become(request):
    """In the forked child: take the client's streams, folder and environment, run the program, exit (never
    returns: nothing of the server's loop may run in a child)."""
    code = 1
    try:
        os.setsid()
        for target, fd in enumerate(request.fds):
            os.dup2(fd, target)
        for fd in request.fds:
            if fd > 2:
                os.close(fd)
        code = _run(request)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code & 0xFF)


def _run(request):
    """The program of ``request`` run in this process; its exit code."""
    try:
        os.chdir(request.folder)
        os.environ.clear()
        os.environ.update(request.env)
        program = request.argv[0]
        sys.argv = list(request.argv)
        sys.path[0] = os.path.dirname(os.path.abspath(program))
        module = sys.modules.get(PRELOAD.get(os.path.basename(program), ""))
        if module is not None and sys.path[0] == os.path.dirname(module.__file__):
            sys.exit(module.main())
        run_program(program)
        code = 0
    except SystemExit as exc:
        code = exit_code(exc)
    except KeyboardInterrupt:  # as the interpreter ends on an uncaught one: by SIGINT
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    return code


class Server:
    """The listening socket, the requests not read yet, the clients whose children run, the SIGCHLD wake-up.

    One loop serves everything and never blocks on a client: a connection's request is read once it is
    readable (a client that sends nothing within ``REQUEST_S`` is dropped), and a client that goes away
    costs only its own child.
    """

    def __init__(self, path):
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old = os.umask(0o177)
        try:
            self.listener.bind(path)
        finally:
            os.umask(old)
        self.listener.listen(64)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.pending = {}  # connection -> when it was accepted (its request not read yet)
        self.children = {}  # pid -> the client's connection
        self.gone = set()  # connections whose client left before its child ended

    @staticmethod
    def _send(conn, text):
        """Send one reply; False if the client is gone."""
        try:
            conn.sendall(text.encode())
            return True
        except OSError:
            return False

    def _accept(self):
        conn, _ = self.listener.accept()
        conn.setblocking(False)
        self.pending[conn] = time.monotonic()

    def _read(self, conn):
        del self.pending[conn]
        try:
            request = read_request(conn)
        except (OSError, ValueError):
            request = None
        if request is None:  # the client runs the program itself, as it does without a server
            self._send(conn, f"refused {errno.EINVAL}\n")
            conn.close()
            return
        self._fork(conn, request)

    def _fork(self, conn, request):
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:  # the client runs the program itself (cnlab-fork.c)
            for fd in request.fds:
                os.close(fd)
            self._send(conn, f"refused {exc.errno}\n")
            conn.close()
            return
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                for sock in [self.listener, *self.pending, *self.children.values(), conn]:
                    sock.close()
                os.close(self.wake_r)
                os.close(self.wake_w)
                become(request)
            finally:
                os._exit(127)
        for fd in request.fds:
            os.close(fd)
        self.children[pid] = conn
        if not self._send(conn, f"pid {pid}\n"):
            self._client_gone(conn)

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                self.gone.discard(conn)
                self._send(conn, f"exit {status}\n")
                conn.close()

    def _watch(self, conn):
        """A running child's client connection is readable: it hung up (or sent what it should not: dropped)."""
        try:
            if conn.recv(4096):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._client_gone(conn)

    def _client_gone(self, conn):
        """A client that went away before its child ended (killed, as a timed-out job is): kill the child's
        session, as killing the client's process group did when the program ran in it."""
        self.gone.add(conn)
        for pid, known in list(self.children.items()):
            if known is conn:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:  # not yet in a session of its own
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass

    def _drop_stalled(self):
        now = time.monotonic()
        for conn, since in list(self.pending.items()):
            if now - since > REQUEST_S:
                del self.pending[conn]
                conn.close()

    def serve(self):
        """Serve until killed."""
        while True:
            self._drop_stalled()
            watched = [self.listener, self.wake_r, *self.pending,
                       *(c for c in self.children.values() if c not in self.gone)]
            try:
                readable, _, _ = select.select(watched, [], [], 1.0 if self.pending else None)
            except InterruptedError:
                continue
            for item in readable:
                try:
                    if item is self.wake_r:
                        os.read(self.wake_r, 512)
                        self._reap()
                    elif item is self.listener:
                        self._accept()
                    elif item in self.pending:
                        self._read(item)
                    elif item.fileno() >= 0 and item not in self.gone:
                        self._watch(item)
                except OSError:
                    continue  # one client's trouble; the others are served on


def preload(folder):
    """Import the preloaded programs' modules from ``folder`` and the standard-library modules of
    :data:`PRELOAD_LIBRARY`; the names that failed, with why."""
    sys.path.insert(0, folder)
    failed = []
    for module in (*PRELOAD.values(), *PRELOAD_LIBRARY):
        try:
            __import__(module)
        except Exception as exc:  # a broken program fails when it runs, as without the server
            failed.append(f"{module}: {exc}")
    return failed


def main():
    """``forkserver.py [--daemon] [--socket PATH]``: preload, listen, serve; ``--daemon`` returns once listening."""
    args = sys.argv[1:]
    path = args[args.index("--socket") + 1] if "--socket" in args else SOCKET
    failed = preload(os.path.dirname(os.path.abspath(__file__)))
    if "--daemon" in args:
        ready_r, ready_w = os.pipe()
        if os.fork():
            os.close(ready_w)
            word = b""
            while chunk := os.read(ready_r, 4096):  # until the server writes its word and closes the pipe
                word += chunk
            word = word.decode(errors="replace")
            print(f"cnlab forkserver: {word or 'failed to start'}", file=sys.stderr)
            return 0 if word.startswith("listening") else 1
        os.close(ready_r)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        server = Server(path)
        os.write(ready_w, f"listening on {path} (pid {os.getpid()}); preload failed: {'; '.join(failed) or 'none'}"
                 .encode())
        os.close(ready_w)
    else:
        server = Server(path)
        print(f"cnlab forkserver: listening on {path}", file=sys.stderr, flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
