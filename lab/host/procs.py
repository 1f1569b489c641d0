"""Child processes that never outlive the orchestrator.

Every QEMU is spawned through :func:`spawn_owned`: in its own session (so
its whole group can be killed) and with ``PR_SET_PDEATHSIG`` = SIGKILL, so
the kernel kills it when the spawning thread's process dies, however it
dies (exit, Ctrl-C, SIGTERM, SIGKILL, a crashed pytest-xdist worker).

The death signal is tied to the *thread* that forked, not the process: a
guest started from a short-lived thread (a thread pool, a fixture helper)
would be killed when that thread ends.  So every owned child is forked by one
spawner thread that lives as long as the process.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future

__all__ = ["spawn_owned", "stop_process", "die_with_parent"]

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (or exit now if it has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class _SpawnerThread:
    """The one thread of this process that forks owned children; it never ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue | None = None
        self._owner_pid = 0

    def call(self, job: Callable[[], subprocess.Popen]) -> subprocess.Popen:
        """Run ``job`` on the spawner thread and return its result (or raise its error)."""
        with self._lock:
            if self._jobs is None or self._owner_pid != os.getpid():  # first use, or a forked child
                self._jobs = queue.SimpleQueue()
                self._owner_pid = os.getpid()
                threading.Thread(target=self._serve, args=(self._jobs,), name="cnlab-spawner",
                                 daemon=True).start()
            jobs = self._jobs
        done: Future = Future()
        jobs.put((job, done))
        return done.result()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue) -> None:
        while True:
            job, done = jobs.get()
            try:
                done.set_result(job())
            except BaseException as exc:  # handed to the caller, raised there
                done.set_exception(exc)


_spawner = _SpawnerThread()


def spawn_owned(argv: list[str], **kwargs) -> subprocess.Popen:
    """Start ``argv`` so that it dies with this process, whichever thread asks."""
    parent = os.getpid()
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return _spawner.call(lambda: subprocess.Popen(
        argv,
        start_new_session=True,
        preexec_fn=lambda: die_with_parent(parent),
        **kwargs,
    ))


def stop_process(proc: subprocess.Popen, grace: float = 0.0) -> int | None:
    """Kill ``proc``'s process group (after ``grace`` seconds) and reap it."""
    if proc.poll() is None and grace > 0:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode
