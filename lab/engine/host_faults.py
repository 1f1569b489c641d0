"""Host-side faults: the guest agent decides when they fire, the orchestrator carries them out.

The agent announces each firing of a host-side fault (QMP actions, such as
pausing the whole guest) as a ``CNLAB-HOST-FAULT {json}`` line on stderr.
:class:`HostFaults` runs its inject actions at once, its restore actions
``duration`` seconds later by the host's clock (a paused guest cannot ask to
be resumed), and records when each step happened, in seconds from the start
of the load as the host saw it (the agent's ``CNLAB-AGENT load`` line).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from lab.errors import LabError

__all__ = ["HostFaults"]


class HostFaults:
    """Carries out host-side fault requests for one scenario on one guest.

    :param guest: the guest (its ``qmp()`` runs QMP commands).
    """

    def __init__(self, guest: Any) -> None:
        self.guest = guest
        self.load_started: float | None = None
        self.records: list[dict[str, Any]] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def load_began(self) -> None:
        """The agent printed its load line: the host's zero for fault times."""
        self.load_started = time.monotonic()

    def _now(self) -> float:
        return round(time.monotonic() - (self.load_started or time.monotonic()), 4)

    def _run(self, action: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"action": " ".join(str(a) for a in action), "ok": True, "t": self._now()}
        try:
            if action[0] == "expect-qmp":
                status = (self.guest.qmp("query-status") or {}).get("status")
                out["evidence"] = True
                out["seen"] = f"QEMU status {status}"
                if status != action[1]:
                    out.update(ok=False, error=f"fired without effect: QEMU status {status}, not {action[1]}")
                return out
            if action[0] != "qmp":
                raise LabError(f"not a host-side action: {action[0]!r}")
            arguments = action[2] if len(action) > 2 else {}
            self.guest.qmp(action[1], **arguments)
        except LabError as exc:
            out.update(ok=False, error=str(exc))
        except Exception as exc:  # a QMP transport error must not kill the scenario's host thread
            out.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        return out

    def request(self, request: dict[str, Any]) -> None:
        """One ``CNLAB-HOST-FAULT`` request: inject now, restore after its duration (in a thread)."""
        received = self._now()
        record: dict[str, Any] = {"label": request["label"], "n": request["n"], "side": "host",
                                  "due": request.get("due"), "requested": request.get("t"), "received": received,
                                  "start": None, "end": None, "restored": None, "ok": True, "actions": []}
        with self._lock:
            self.records.append(record)

        def work() -> None:
            record["start"] = self._now()
            for action in list(request["inject"]) + list(request.get("evidence", [])):
                outcome = self._run(action)
                record["actions"].append(outcome)
                record["ok"] = record["ok"] and outcome["ok"]
            record["end"] = self._now()
            if request["restore"]:
                self._stop.wait(request.get("duration") or 0)
                for action in request["restore"]:
                    outcome = self._run(action) | {"restore": True}
                    record["actions"].append(outcome)
                    record["ok"] = record["ok"] and outcome["ok"]
                record["restored"] = self._now()

        thread = threading.Thread(target=work, name=f"host-fault-{request['label']}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def finish(self) -> list[dict[str, Any]]:
        """Undo whatever is still injected (the load is over), wait for every step; the records."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.records
