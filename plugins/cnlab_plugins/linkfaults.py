"""Faults on the lab's own control link: the SSH path between host and guest.

A scenario that names one of these runs on a guest whose only network is a
tap in a bridge inside a network namespace the lab creates (``lab.guest.netns``);
the SSH connection goes through that tap, and the load phase runs as a
detached job that the orchestrator waits for across reconnects
(``lab.guest.job``).

- ``link-flap``: the host takes the tap down with pyroute2 and brings it up
  after ``down_s``.  Longer than the lab's dead-link timeout (8 s), the SSH
  connection breaks and the orchestrator must reconnect.
- ``link-netem``: delay and loss with netem.  The host kernel has no netem,
  so the qdisc goes on the guest's side of the link (its ``eth0``, egress:
  every SSH reply and ACK crosses it), added and removed by the load plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab import hookimpl
from lab.config import Setting
from lab.plugin import FaultRegistry, FaultSpec
from lab.plugin.objects import CommandFault

#: The guest's interface on the lab link (its only NIC on a "tap" guest).
GUEST_IFACE = "eth0"
DELAY = Setting("delay_s", float, 0.5, "seconds into the phase before injecting")


def _flap(s: Mapping[str, Any]) -> CommandFault:
    return CommandFault("link-flap", (("link", "down"),), (("link", "up"),), delay_s=s["delay_s"],
                        hold_s=s["down_s"])


def _netem(s: Mapping[str, Any]) -> CommandFault:
    add = ("tc", "qdisc", "add", "dev", GUEST_IFACE, "root", "netem", "delay", f"{s['delay_ms']}ms",
           "loss", f"{s['loss_pct']}%")
    return CommandFault("link-netem", (add,), (("tc", "qdisc", "del", "dev", GUEST_IFACE, "root"),),
                        delay_s=s["delay_s"])


@hookimpl
def lab_faults_register(registry: FaultRegistry, settings: Mapping[str, Any]) -> None:
    registry.add_fault(FaultSpec("link-netem", "netem delay and loss on the guest's side of the lab link",
                                 "host-link", _netem,
                                 settings=(Setting("delay_ms", int, 100, "added delay"),
                                           Setting("loss_pct", float, 5.0, "packet loss percentage"), DELAY)))
    registry.add_fault(FaultSpec("link-flap", "take the guest's tap down and up from the host (SSH must reconnect)",
                                 "host-link", _flap,
                                 settings=(Setting("down_s", float, 3.0, "seconds down"), DELAY)))
