"""Built-in userspace consumers: ``consume.py`` in the guest, one JSON report each.

The consumer joins its groups (every emulator's, unless the scenario gives
``groups``), checks order per (generator, CPU) (module events) or per CPU
(cn_proc), counts gaps, duplicates/reorders, ``ENOBUFS`` and the socket's
drops from ``/proc/net/netlink``, measures latency from the event's kernel
timestamp, and keeps live counters for event-triggered faults (the
``checker`` protocol of docs/guest-contract.md).  Variants are the same
program with other options.  ``checker-native`` is the same checker in C
(``images/init/cnlab-consume.c``, in every guest as ``/run/cnlab/bin/cnlab-consume``):
same options, same report, for rates the Python one cannot keep up with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab import hookimpl
from lab.config import Setting
from lab.plugin import GUEST_PLUGIN_DIR, ConsumerRegistry, ConsumerSpec, GuestFile
from lab.plugin.objects import GuestProgram

from .guestside import HERE

#: A receive buffer that keeps up with the built-in load shapes under TCG (SO_RCVBUFFORCE).
DEFAULT_RCVBUF = 8 << 20
RCVBUF_MAX = 1 << 30


def _rcvbuf(default: int) -> Setting:
    return Setting("rcvbuf", int, default, "receive buffer in bytes (0: the kernel's default)", min=0, max=RCVBUF_MAX)


@hookimpl
def lab_settings_declare() -> list[Setting]:
    """``rcvbuf``: the default receive buffer of every consumer."""
    return [Setting("rcvbuf", int, DEFAULT_RCVBUF, "default SO_RCVBUF(FORCE) of every consumer in bytes "
                    "(0: the kernel's default)", min=0, max=RCVBUF_MAX)]


@hookimpl
def lab_guest_files_add(config) -> list[GuestFile]:
    """``consume.py`` into the plugins' guest folder."""
    return [GuestFile(HERE / "consume.py", f"{GUEST_PLUGIN_DIR}/consume.py", 0o755)]


#: The native checker, copied into every guest by its init (lab.image.build).
NATIVE_CONSUMER = "/run/cnlab/bin/cnlab-consume"


def _spec(name: str, description: str, base: Mapping[str, Any], instances: int = 1,
          extra: tuple[Setting, ...] = (), native: bool = False) -> ConsumerSpec:
    def factory(s: Mapping[str, Any]) -> GuestProgram:
        options = dict(base)
        options.update({k: v for k, v in s.items() if k != "instances"})
        if native:
            return GuestProgram(name, NATIVE_CONSUMER, options, s.get("instances", instances), interpreter=None)
        # consume.py needs only the standard library and kabi: forked from the agent, it starts at once; the
        # pyroute2 variant imports pyroute2 from site-packages, so it gets an interpreter of its own
        start = "exec" if options.get("pyroute2") else "fork"
        return GuestProgram(name, "consume.py", options, s.get("instances", instances), start=start)

    return ConsumerSpec(name, description, factory, settings=extra)


@hookimpl
def lab_consumers_register(registry: ConsumerRegistry, settings: Mapping[str, Any]) -> None:
    """checker and its variants."""
    rcvbuf = settings["rcvbuf"]
    registry.add_consumer(_spec(
        "checker", "order/gap/duplicate/ENOBUFS/drops/latency checker", {}, extra=(_rcvbuf(rcvbuf),)))
    registry.add_consumer(_spec(
        "checker-native", "the checker in C (same accounting and report) for rates the Python checker cannot take",
        {}, extra=(_rcvbuf(rcvbuf),), native=True))
    registry.add_consumer(_spec(
        "pyroute2", "checker that receives and decodes through pyroute2 (ConnectorSocket, Marshal keyed on idx)",
        {"pyroute2": True}, extra=(_rcvbuf(rcvbuf),)))
    registry.add_consumer(_spec(
        "slow", "checker that sleeps after every datagram (provokes overruns)", {},
        extra=(Setting("delay_us", int, 200, "sleep after each datagram, microseconds", min=0, max=1_000_000),
               _rcvbuf(rcvbuf))))
    registry.add_consumer(_spec(
        "multi", "several checkers on the same groups", {}, instances=3,
        extra=(Setting("instances", int, 3, "how many consumers", min=1, max=16), _rcvbuf(rcvbuf))))
    registry.add_consumer(_spec(
        "tiny-rcvbuf", "checker with a tiny receive buffer (SO_RCVBUFFORCE)", {},
        extra=(_rcvbuf(4096),)))
    registry.add_consumer(_spec(
        "churn", "checker that leaves and rejoins its groups during the run (gaps while away are not loss)", {},
        extra=(Setting("churn_ms", int, 100, "period of leave/rejoin, milliseconds", min=10, max=60_000),
               _rcvbuf(rcvbuf))))
