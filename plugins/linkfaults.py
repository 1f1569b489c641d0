"""Faults on the lab's own control link, from the host side (declared only).

Planned: the guest on a tap in a bridge inside a network namespace the lab
creates; pyroute2 applies netem delay/loss and link down/up on that tap, and
the orchestrator must ride out its SSH link failing and reconnect.  The lab's
guests use user-mode networking today, so these specs can be listed and
configured but their factories refuse to build.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab import hookimpl
from lab.config import Setting
from lab.errors import PluginError
from lab.plugin import FaultRegistry, FaultSpec


def _not_yet(name: str):
    def factory(settings: Mapping[str, Any]):
        raise PluginError(f"fault {name!r} needs the tap/bridge/netns guest network, which the lab does not "
                          "create yet")

    return factory


@hookimpl
def lab_faults_register(registry: FaultRegistry, settings: Mapping[str, Any]) -> None:
    registry.add_fault(FaultSpec("link-netem", "netem delay and loss on the guest's tap (host side, pyroute2)",
                                 "host-link", _not_yet("link-netem"),
                                 settings=(Setting("delay_ms", int, 100, "added delay"),
                                           Setting("loss_pct", float, 5.0, "packet loss percentage"))))
    registry.add_fault(FaultSpec("link-flap", "take the guest's tap down and up (SSH must reconnect)",
                                 "host-link", _not_yet("link-flap"),
                                 settings=(Setting("down_s", float, 3.0, "seconds down"),)))
