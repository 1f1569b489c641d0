"""Built-in userspace consumers: ``consume.py`` in the guest, one JSON report each.

The consumer joins the emulators' groups, checks order per (generator, CPU)
(module events) or per CPU (cn_proc), counts gaps, duplicates/reorders,
``ENOBUFS`` and the socket's drops from ``/proc/net/netlink``, and measures
latency from the event's kernel timestamp.  Variants are the same program with
other options.  ``checker-native`` is the same checker in C
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


@hookimpl
def lab_settings_declare() -> list[Setting]:
    return [Setting("rcvbuf", int, 0, "SO_RCVBUF(FORCE) of every consumer in bytes (0: kernel default)")]


@hookimpl
def lab_guest_files_add(config) -> list[GuestFile]:
    return [GuestFile(HERE / "consume.py", f"{GUEST_PLUGIN_DIR}/consume.py", 0o755),
            GuestFile(HERE / "runplan.py", f"{GUEST_PLUGIN_DIR}/runplan.py", 0o755)]


#: The native checker, copied into every guest by its init (lab.image.build).
NATIVE_CONSUMER = "/run/cnlab/bin/cnlab-consume"


def _spec(name: str, description: str, base: Mapping[str, Any], instances: int = 1,
          extra: tuple[Setting, ...] = (), native: bool = False) -> ConsumerSpec:
    def factory(s: Mapping[str, Any]) -> GuestProgram:
        options = dict(base)
        options.update({k: v for k, v in s.items() if k != "instances"})
        if native:
            return GuestProgram(name, NATIVE_CONSUMER, options, s.get("instances", instances), interpreter=None)
        return GuestProgram(name, "consume.py", options, s.get("instances", instances))

    return ConsumerSpec(name, description, factory, settings=extra)


@hookimpl
def lab_consumers_register(registry: ConsumerRegistry, settings: Mapping[str, Any]) -> None:
    rcvbuf = settings["rcvbuf"]
    registry.add_consumer(_spec(
        "checker", "order/gap/duplicate/ENOBUFS/drops/latency checker on every emulator group",
        {"rcvbuf": rcvbuf}, extra=(Setting("rcvbuf", int, rcvbuf, "receive buffer in bytes (0: default)"),)))
    registry.add_consumer(_spec(
        "checker-native", "the checker in C (same accounting and report) for rates the Python checker cannot take",
        {"rcvbuf": rcvbuf}, extra=(Setting("rcvbuf", int, rcvbuf, "receive buffer in bytes (0: default)"),),
        native=True))
    registry.add_consumer(_spec(
        "pyroute2", "checker that receives and decodes through pyroute2 (ConnectorSocket, Marshal keyed on idx)",
        {"rcvbuf": rcvbuf, "pyroute2": True},
        extra=(Setting("rcvbuf", int, rcvbuf, "receive buffer in bytes (0: default)"),)))
    registry.add_consumer(_spec(
        "slow", "checker that sleeps after every datagram (provokes overruns)",
        {"rcvbuf": rcvbuf, "delay_us": 200},
        extra=(Setting("delay_us", int, 200, "sleep after each datagram, microseconds"),)))
    registry.add_consumer(_spec(
        "multi", "several checkers on the same groups",
        {"rcvbuf": rcvbuf}, instances=3, extra=(Setting("instances", int, 3, "how many consumers"),)))
    registry.add_consumer(_spec(
        "tiny-rcvbuf", "checker with a tiny receive buffer (SO_RCVBUFFORCE)",
        {"rcvbuf": 4096}, extra=(Setting("rcvbuf", int, 4096, "receive buffer in bytes"),)))
    registry.add_consumer(_spec(
        "churn", "checker that leaves and rejoins its groups during the run (gaps while away are not loss)",
        {"rcvbuf": rcvbuf, "churn_ms": 100},
        extra=(Setting("churn_ms", int, 100, "period of leave/rejoin, milliseconds"),
               Setting("rcvbuf", int, rcvbuf, "receive buffer in bytes (0: default)"))))
