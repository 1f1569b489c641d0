"""Child processes that never outlive the orchestrator.

Every QEMU is spawned through :func:`spawn_owned`: in its own session (so
its whole group can be killed) and with ``PR_SET_PDEATHSIG`` = SIGKILL, so
the kernel kills it when the spawning thread's process dies, however it
dies (exit, Ctrl-C, SIGTERM, SIGKILL, a crashed pytest-xdist worker).

The death signal is tied to the *thread* that forked: spawn from a thread
that lives as long as the guests (the main thread, in cnlab).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess

__all__ = ["spawn_owned", "stop_process", "die_with_parent"]

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (or exit now if it has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def spawn_owned(argv: list[str], **kwargs) -> subprocess.Popen:
    """Start ``argv`` so that it dies with this process."""
    parent = os.getpid()
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(
        argv,
        start_new_session=True,
        preexec_fn=lambda: die_with_parent(parent),
        **kwargs,
    )


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
