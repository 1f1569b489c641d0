"""Running the guest agent (``lab/guestside/agent.py``) on a ready guest, from the host.

The agent's stderr is read as it comes: its ``CNLAB-AGENT load`` line starts
the host's clock for the load, and each ``CNLAB-HOST-FAULT`` line is handed to
:class:`~lab.engine.host_faults.HostFaults`.  On a guest that sits on the
lab's own link (link faults break SSH on purpose) the agent runs as a
detached job that the host waits for across reconnects (``lab.guest.job``);
such scenarios have no host-side faults (``lab.engine.plan`` refuses them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from lab.engine.host_faults import HostFaults
from lab.errors import GuestError
from lab.guest.job import run_job

__all__ = ["run_agent", "AGENT_PROGRAM", "FORK_CLIENT", "LOAD_LINE", "HOST_FAULT_LINE"]

AGENT_PROGRAM = "agent.py"
#: Runs the agent as a fork of the guest's fork server, imports done (``lab/guestside/forkserver.py``), or as
#: ``python3 -S`` where none runs.
FORK_CLIENT = "/run/cnlab/bin/cnlab-fork"
LOAD_LINE = b"CNLAB-AGENT load "
HOST_FAULT_LINE = b"CNLAB-HOST-FAULT "


class _Lines:
    """Splits the agent's stderr into lines and acts on the ones meant for the host."""

    def __init__(self, host_faults: HostFaults, on_load: Callable[[], None]) -> None:
        self.buffer = bytearray()
        self.host_faults = host_faults
        self.on_load = on_load

    def __call__(self, stream: str, chunk: bytes) -> None:
        if stream != "stderr":
            return
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, _, rest = bytes(self.buffer).partition(b"\n")
            self.buffer[:] = rest
            if line.startswith(LOAD_LINE):
                self.host_faults.load_began()
                self.on_load()
            elif line.startswith(HOST_FAULT_LINE):
                self.host_faults.request(json.loads(line[len(HOST_FAULT_LINE):]))


def run_agent(guest: Any, plan: dict[str, Any], lib: str,
              on_load: Callable[[], None] = lambda: None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the agent with ``plan``; returns its report and the host-side fault records.

    :param lib: the guest folder holding the agent (``lab.guest.files.install_guest_programs``).
    :param on_load: called when the load starts (for progress lines).
    :raises GuestError: the agent failed or printed no report (its stderr's end is in the message).
    """
    started = time.monotonic()
    argv = [FORK_CLIENT, f"{lib}/{AGENT_PROGRAM}"]
    stdin = json.dumps(plan).encode()
    timeout = plan["timeout_s"] + 120
    host_faults = HostFaults(guest)
    try:
        if guest.link is None:
            lines = _Lines(host_faults, on_load)
            result = guest.run(argv, stdin=stdin, timeout=timeout, sink=lines)
        else:
            on_load()
            result = run_job(guest, argv, stdin=stdin, timeout=timeout * guest.spec.accel.timeout_scale,
                             name="agent")
    finally:
        host_records = host_faults.finish()
    tail = " | ".join(result.stderr.decode(errors="replace").strip().splitlines()[-3:])
    if not result.ok:
        raise GuestError(f"the guest agent exited with status {result.exit_status}: {tail}")
    try:
        report = json.loads(result.text)
    except ValueError:
        raise GuestError(f"the guest agent printed no report: {tail}") from None
    report["ssh_reconnects"] = result.extra.get("reconnects", 0)
    # when the host heard the load begin and saw the agent end, from the agent's start over SSH
    loaded = host_faults.load_started
    report["host_marks"] = {"load_line": None if loaded is None else round(loaded - started, 3),
                            "returned": round(time.monotonic() - started, 3)}
    return report, host_records
