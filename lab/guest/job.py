"""Long guest commands that ride out the loss of the SSH link.

:func:`run_job` starts a command detached in the guest (``guestside/job.py``)
and waits for it in slices.  When the SSH connection breaks (a link fault,
a paused guest), it reconnects, with retries, until the job's deadline and
waits again; the command itself never notices.  The result is an ordinary
:class:`~lab.command.CommandResult`, with the number of reconnections in
its ``extra``.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

from lab.command import CommandResult, as_argv
from lab.deadline import Deadline
from lab.errors import GuestError, TransportError

__all__ = ["run_job", "JOB_ROOT"]

log = logging.getLogger(__name__)

#: Job folders in the guest (a tmpfs, fresh per boot).
JOB_ROOT = "/run/cnlab/jobs"
#: Longest single wait on one connection; a shorter slice notices a dead link sooner.
WAIT_SLICE_S = 20.0
STILL_RUNNING = 3
_JOB_PROGRAM = (Path(__file__).resolve().parents[1] / "guestside" / "job.py").read_text()


def _job(*args: str) -> list[str]:
    return ["python3", "-c", _JOB_PROGRAM, *args]


def _reconnect(guest, deadline: Deadline) -> None:
    """Reconnect until it works or the deadline passes (each try bounded by the SSH timeout)."""
    while True:
        try:
            guest.ssh.connect(Deadline(min(max(deadline.remaining(), 1.0), guest.ssh.connect_timeout),
                                       "SSH reconnect"))
            return
        except TransportError as exc:
            if not guest.alive():
                raise GuestError(f"guest {guest.spec.name} died while a job ran") from exc
            if deadline.expired():
                raise
            log.info("guest %s: reconnect failed (%s); retrying", guest.spec.name, exc)
            time.sleep(0.5)  # the link is down: nothing announces its return


class _Riding:
    """Runs short guest commands, reconnecting and retrying while the link is down.

    Every command given to it must be safe to run twice (the first answer may be lost).
    """

    def __init__(self, guest, deadline: Deadline) -> None:
        self.guest = guest
        self.deadline = deadline
        self.reconnects = 0

    def run(self, argv: list[str], timeout: float, **kwargs) -> CommandResult:
        while True:
            try:
                return self.guest.ssh.run(argv, timeout=timeout, **kwargs)
            except TransportError as exc:
                log.info("guest %s: SSH lost (%s); reconnecting", self.guest.spec.name, exc)
                _reconnect(self.guest, self.deadline)
                self.reconnects += 1


def run_job(guest, argv: list[str], stdin: bytes = b"", timeout: float = 600.0, name: str = "job",
            root: str = JOB_ROOT) -> CommandResult:
    """Run ``argv`` in the guest so that it survives SSH failures; ``timeout`` is in host seconds."""
    argv = as_argv(argv)
    folder = f"{root}/{name}-{secrets.token_hex(4)}"
    started = time.monotonic()
    deadline = Deadline(timeout, f"{argv[0]} in guest {guest.spec.name}")
    ssh = _Riding(guest, deadline)
    ssh.run(_job("start", folder, "--", *argv), stdin=stdin, timeout=60).check()
    while True:
        slice_s = max(1.0, min(WAIT_SLICE_S, deadline.remaining()))
        waited = ssh.run(_job("wait", folder, f"{slice_s:.1f}"), timeout=slice_s + 30)
        if waited.exit_status == 0:
            status = int(waited.text.strip())
            break
        if waited.exit_status != STILL_RUNNING:
            raise GuestError(f"waiting for {argv[0]} failed: {waited.stderr.decode(errors='replace').strip()}")
        if deadline.expired():
            ssh.run(_job("kill", folder), timeout=30)
            status = -1
            break
    out = ssh.run(["cat", f"{folder}/stdout"], timeout=60).check().stdout
    err = ssh.run(["cat", f"{folder}/stderr"], timeout=60).check().stdout
    ssh.run(["rm", "-rf", folder], timeout=30)
    return CommandResult(argv, status, out, err, time.monotonic() - started,
                         {"timed_out": status == -1, "reconnects": ssh.reconnects})
