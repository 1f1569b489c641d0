"""The agent's drain on fake module replies: a queue that empties, one that does not, and a module that refuses
STATS (a mutant that answers every request with an error): an error line at once, not a traceback or a wait."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from .guest_modules import load_guest_module

agent = load_guest_module("agent")

CLOSED = {"inserted": 10, "enqueued": 10, "drop_full": 0, "drop_nomem": 0, "dequeued": 10, "sent": 10,
          "drop_nolistener": 0, "drop_overrun": 0, "drop_nlerr": 0, "queued": 0}


class Module:
    """Answers STATS from ``bodies`` in turn (the last one repeats); ``refuse``: every STATS is refused."""

    def __init__(self, *totals: dict, refuse: str = "") -> None:
        self.totals, self.refuse, self.calls = list(totals), refuse, 0

    def stats(self, reset_hwm=False):
        self.calls += 1
        if self.refuse:
            return SimpleNamespace(ok=False, error_name=self.refuse, body={})
        total = self.totals[min(self.calls, len(self.totals)) - 1]
        return SimpleNamespace(ok=True, error_name="", body={"total": total, "cpus": [
            {"cpu": 0, **total}]})


def test_a_queue_that_empties_is_drained():
    holding = {**CLOSED, "dequeued": 7, "sent": 7, "queued": 3}
    out = agent.drain(Module(holding, holding, CLOSED), 5.0)
    assert out["ok"] and "error" not in out


def test_a_queue_that_holds_names_its_cpu():
    holding = {**CLOSED, "dequeued": 7, "sent": 7, "queued": 3}
    out = agent.drain(Module(holding), 0.1)
    assert not out["ok"] and out["cpus"] == {"0": 3} and "error" not in out


def test_a_module_that_refuses_stats_fails_the_drain_at_once_naming_the_error():
    started = time.monotonic()
    out = agent.drain(Module(refuse="EBADMSG (-74)"), 30.0)
    assert time.monotonic() - started < 5.0
    assert not out["ok"] and out["error"] == "OSError: STATS refused: EBADMSG (-74)"
    with pytest.raises(OSError, match="STATS refused: EBADMSG"):
        agent.stats_body(Module(refuse="EBADMSG (-74)"))

