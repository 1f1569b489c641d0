"""A fork server: a guest Python that has already imported the lab's guest programs, and forks them on request.

A restored guest starts with its TCG translation cache empty, and a Python started from scratch then spends
most of a second on its own start and on importing ``json``, ``re``, ``subprocess`` and the agent's modules
before the agent does anything.  The guest whose state is saved starts this server (``--daemon`` returns once
it listens), so every guest restored from that state holds a Python with those imports done.  The client,
``cnlab-fork PROGRAM ARG...`` (``images/init/cnlab-fork.c``), passes its stdin, stdout and stderr, working
folder, environment and arguments over ``SOCKET``; the server forks, and the child becomes the program:
a session of its own, the client's three streams, folder and environment, ``sys.argv``, then the
preloaded module's ``main()`` (or ``runpy`` for any other file).  The client forwards SIGTERM, SIGINT
and SIGHUP to the child's process group and exits as the child did.  Without a server (a guest that
booted cold) the client runs ``python3 -S PROGRAM ARG...`` itself, so callers need not know.

Every child reseeds Python's ``random`` at the fork (the standard library does so), and forks happen only
on requests, which reach a restored guest after its CRNG is reseeded.  The children share the server's
hash seed, as all guests restored from one state do.

The socket (``SOCK_SEQPACKET``) is root's only (mode 0600, peer credentials checked).  A request is one
message: ``u32 argc, u32 envc`` then NUL-terminated strings: the folder, ``argc`` arguments (the program first),
``envc`` environment entries; the three streams ride along as ``SCM_RIGHTS``.  Replies are messages:
``pid N``, then ``exit STATUS`` (a wait status) when the child ends; or ``refused ERRNO`` if the server
could not fork, and the client then runs the program itself.

Standard library only.
"""

import array
import os
import select
import signal
import socket
import struct
import sys
import traceback

SOCKET = "/run/cnlab/forkserver.sock"
#: Programs forked with their module already imported: file name -> module (it must have ``main()``).
PRELOAD = {"agent.py": "agent"}
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
    """The request on ``conn`` (a connected Unix socket), or None if it is malformed or not root's."""
    uid = struct.unpack("=iII", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
    fds = array.array("i")
    data, ancillary, _, _ = conn.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if uid != 0 or len(fds) != 3 or len(data) < _HEADER.size:
        for fd in fds:
            os.close(fd)
        return None
    argc, envc = _HEADER.unpack_from(data)
    strings = [s.decode("utf-8", "surrogateescape") for s in data[_HEADER.size:].split(b"\0")[:-1]]
    if argc < 1 or len(strings) != 1 + argc + envc:
        for fd in fds:
            os.close(fd)
        return None
    env = dict(entry.split("=", 1) for entry in strings[1 + argc:] if "=" in entry)
    return Request(list(fds), strings[0], strings[1:1 + argc], env)


def _exit_code(exc):
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
        if module is not None and os.path.dirname(os.path.abspath(program)) == os.path.dirname(module.__file__):
            code = module.main()
            code = _exit_code(SystemExit(code))
        else:
            import runpy

            runpy.run_path(program, run_name="__main__")
            code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    return code


class Server:
    """The listening socket, the clients whose children run, and the SIGCHLD wake-up."""

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
        self.children = {}  # pid -> the client's connection
        self.hung_up = set()  # connections whose client left before its child ended

    def _fork(self, conn, request):
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:  # the client runs the program itself (cnlab-fork.c)
            for fd in request.fds:
                os.close(fd)
            conn.sendall(f"refused {exc.errno}\n".encode())
            conn.close()
            return
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                for sock in [self.listener, *self.children.values(), conn]:
                    sock.close()
                os.close(self.wake_r)
                os.close(self.wake_w)
                become(request)
            finally:
                os._exit(127)
        for fd in request.fds:
            os.close(fd)
        self.children[pid] = conn
        conn.sendall(f"pid {pid}\n".encode())

    def _accept(self):
        conn, _ = self.listener.accept()
        try:
            request = read_request(conn)
        except OSError:
            request = None
        if request is None:
            conn.close()
            return
        self._fork(conn, request)

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            self.hung_up.discard(conn)
            if conn is not None:
                try:
                    conn.sendall(f"exit {status}\n".encode())
                except OSError:
                    pass
                conn.close()

    def _client_gone(self, conn):
        """A client that hung up before its child ended: hang up on the child's session too."""
        self.hung_up.add(conn)
        for pid, known in list(self.children.items()):
            if known is conn:
                try:
                    os.killpg(pid, signal.SIGHUP)
                except OSError:
                    pass

    def serve(self):
        """Serve until killed."""
        while True:
            watched = [self.listener, self.wake_r, *(c for c in self.children.values() if c not in self.hung_up)]
            try:
                readable, _, _ = select.select(watched, [], [])
            except InterruptedError:
                continue
            if self.wake_r in readable:
                os.read(self.wake_r, 512)
                self._reap()
            if self.listener in readable:
                self._accept()
            for conn in readable:
                if isinstance(conn, socket.socket) and conn is not self.listener and conn.fileno() >= 0 \
                        and conn not in self.hung_up and not conn.recv(1, socket.MSG_PEEK):
                    self._client_gone(conn)


def preload(folder):
    """Import the preloaded programs' modules from ``folder``; the names that failed, with why."""
    sys.path.insert(0, folder)
    failed = []
    for module in PRELOAD.values():
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
