"""Guest side of a detached job: a command that outlives the SSH connection
that started it, so the host can wait for it across reconnects.

``job.py start DIR -- ARGV...``
    Saves this program's stdin as ``DIR/stdin`` and runs ARGV in a session of
    its own (no SSH channel open in it), with ``DIR/stdout`` and
    ``DIR/stderr``; a supervisor writes ARGV's exit status to ``DIR/status``
    when it ends.  Prints the supervisor's pid and returns at once.  Started
    again with the same DIR, it only prints the pid (the host may retry).
``job.py wait DIR SECONDS``
    Waits (on a pidfd, no polling) up to SECONDS for the job to end.  Exit 0
    and prints the status when it ended, exit 3 while it still runs.
``job.py kill DIR``
    SIGKILLs the job's process group.

The host sends this file's text as ``python3 -c``: nothing to install first.
Standard library only (the guest's python3).
"""

import os
import select
import signal
import subprocess
import sys

STILL_RUNNING = 3


def _path(folder, name):
    return os.path.join(folder, name)


def _write_atomically(path, text):
    with open(path + ".tmp", "w") as out:
        out.write(text)
    os.rename(path + ".tmp", path)


def _supervise(folder, argv):
    """Grandchild: detached from SSH, runs the job, records its status."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    with open(_path(folder, "stdin"), "rb") as stdin, open(_path(folder, "stdout"), "wb") as stdout, \
            open(_path(folder, "stderr"), "wb") as stderr:
        try:
            job = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr)
            _write_atomically(_path(folder, "job.pid"), str(job.pid))
            status = job.wait()
        except OSError as exc:
            stderr.write(f"job.py: cannot run {argv[0]}: {exc}\n".encode())
            status = 127
    _write_atomically(_path(folder, "status"), str(status))


def start(folder, argv):
    if os.path.exists(_path(folder, "pid")):  # a retry after the host lost the first answer
        with open(_path(folder, "pid")) as handle:
            print(handle.read())
        return 0
    os.makedirs(folder, exist_ok=True)
    with open(_path(folder, "stdin"), "wb") as out:
        out.write(sys.stdin.buffer.read())
    first = os.fork()
    if first == 0:
        supervisor = os.fork()
        if supervisor == 0:
            try:
                _supervise(folder, argv)
            finally:
                os._exit(0)
        _write_atomically(_path(folder, "pid"), str(supervisor))
        os._exit(0)
    os.waitpid(first, 0)
    with open(_path(folder, "pid")) as handle:
        print(handle.read())
    return 0


def wait(folder, seconds):
    status_file = _path(folder, "status")
    if not os.path.exists(status_file):
        with open(_path(folder, "pid")) as handle:
            pid = int(handle.read())
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = None  # already gone: the status file is there now, or it never will be
        if pidfd is not None:
            select.select([pidfd], [], [], seconds)
            os.close(pidfd)
    if not os.path.exists(status_file):
        return STILL_RUNNING
    with open(status_file) as handle:
        print(handle.read())
    return 0


def kill(folder):
    try:
        with open(_path(folder, "pid")) as handle:
            os.killpg(int(handle.read()), signal.SIGKILL)
    except (OSError, ValueError):
        pass
    return 0


def main(args):
    if len(args) >= 3 and args[0] == "start" and args[2] == "--":
        return start(args[1], args[3:])
    if len(args) == 3 and args[0] == "wait":
        return wait(args[1], float(args[2]))
    if len(args) == 2 and args[0] == "kill":
        return kill(args[1])
    sys.stderr.write("usage: job.py start DIR -- ARGV... | wait DIR SECONDS | kill DIR\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
