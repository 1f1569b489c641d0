"""Faults on the lab's own control link: the SSH path between host and guest.

A scenario that uses one of these runs on a guest whose only network is a
tap in a bridge inside a network namespace the lab creates
(``lab.guest.netns``, target ``host-link``); the SSH connection goes through
that tap, and the guest agent runs as a detached job that the orchestrator
waits for across reconnects (``lab.guest.job``).  The guest agent carries
out both faults on its side of the link, so they take any trigger:

- ``link-flap``: the guest's ``eth0`` goes down and comes back after
  ``duration``.  Longer than the lab's dead-link timeout (8 s), the SSH
  connection breaks and the orchestrator must reconnect.
- ``link-netem``: netem delay and loss on the guest's ``eth0`` (egress: every
  SSH reply and ACK crosses it; the host kernel has no netem).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab import hookimpl
from lab.config import Setting
from lab.plugin import FaultRegistry, FaultSpec
from lab.plugin.objects import Fault, expect_file, expect_output, run

#: The guest's interface on the lab link (its only NIC on a "tap" guest).
GUEST_IFACE = "eth0"


def _flap(s: Mapping[str, Any]) -> Fault:
    return Fault((run("ip", "link", "set", GUEST_IFACE, "down"),), (run("ip", "link", "set", GUEST_IFACE, "up"),),
                 f"{GUEST_IFACE} down", evidence=(expect_file(f"/sys/class/net/{GUEST_IFACE}/operstate", "down"),))


def _netem(s: Mapping[str, Any]) -> Fault:
    add = ("tc", "qdisc", "add", "dev", GUEST_IFACE, "root", "netem", "delay", f"{s['delay_ms']}ms",
           "loss", f"{s['loss_pct']}%")
    return Fault((run(*add),), (run("tc", "qdisc", "del", "dev", GUEST_IFACE, "root"),),
                 f"netem {s['delay_ms']} ms, {s['loss_pct']}% loss",
                 evidence=(expect_output("netem", "tc", "qdisc", "show", "dev", GUEST_IFACE),))


@hookimpl
def lab_faults_register(registry: FaultRegistry, settings: Mapping[str, Any]) -> None:
    """link-flap and link-netem."""
    registry.add_fault(FaultSpec("link-netem", "netem delay and loss on the guest's side of the lab link",
                                 "host-link", _netem,
                                 settings=(Setting("delay_ms", int, 100, "added delay", min=0, max=60_000),
                                           Setting("loss_pct", float, 5.0, "packet loss percentage", min=0.0,
                                                   max=100.0))))
    registry.add_fault(FaultSpec("link-flap", "take the guest's side of the lab link down, up after duration "
                                              "(SSH must reconnect)", "host-link", _flap, duration=3.0))
