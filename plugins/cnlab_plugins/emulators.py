"""Built-in kernel-subsystem emulators, driven by the lab module's generators.

Each has its own even connector idx and its own group (even: on 6.6+ odd
groups are open to non-root, connector.md §3) and a traffic shape modelled on
the real subsystem:

========== ======= ===== ============================================================
name       idx:val group shape
========== ======= ===== ============================================================
proc-events 0x12:1 18    fork/exec/exit storm: 3 kthread generators, fixed 40-byte events, bursts, every CPU
uevent      0x14:1 20    bursts of text-sized payloads 64..2048 bytes, low rate (softirq + kthread)
audit       0x16:1 22    sustained high rate of 256..1024-byte records for a duration
irq         0x18:1 24    hard-IRQ (hrtimer) and timer-context producers through CBUS
========== ======= ===== ============================================================

Plugin settings (``[plugins.emulators]``): ``scale`` multiplies every count and
rate (use < 1 under TCG).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab import hookimpl
from lab.config import Setting
from lab.plugin import EmulatorRegistry, EmulatorSpec
from lab.plugin.objects import GeneratorProfile

NS = 1_000_000_000


@hookimpl
def lab_settings_declare() -> list[Setting]:
    return [Setting("scale", float, 1.0, "multiply every emulator's counts and rates (e.g. 0.2 under TCG)")]


def _n(value: float, scale: float) -> int:
    return max(1, int(value * scale))


def _proc_events(idx: int, group: int, scale: float):
    def factory(s: Mapping[str, Any]) -> GeneratorProfile:
        one = {"count": _n(s["count"], scale), "rate": _n(s["rate"], scale), "burst": s["burst"],
               "size_min": 40, "size_max": 40, "context": "kthread", "path": "direct"}
        # fork, exec and exit: three generators with the same shape, interleaving on every CPU
        return GeneratorProfile("proc-events", idx, 1, group, (one, one, one))

    return EmulatorSpec(
        "proc-events", "fork/exec/exit storms: small fixed-size events from every CPU (3 generators)",
        idx, 1, group, factory,
        settings=(Setting("count", int, 2000, "events per CPU per generator"),
                  Setting("rate", int, 20000, "events/s per CPU per generator"),
                  Setting("burst", int, 64, "events per wake-up (storm burstiness)")))


def _uevent(idx: int, group: int, scale: float):
    def factory(s: Mapping[str, Any]) -> GeneratorProfile:
        base = {"count": _n(s["count"], scale), "rate": _n(s["rate"], scale), "burst": s["burst"],
                "size_min": 64, "size_max": s["size_max"], "path": "direct"}
        return GeneratorProfile("uevent", idx, 1, group, (dict(base, context="kthread"),
                                                           dict(base, context="softirq")))

    return EmulatorSpec(
        "uevent", "bursts of KEY=value-sized payloads up to 2 KB (device add/remove storms)",
        idx, 1, group, factory,
        settings=(Setting("count", int, 300, "messages per CPU per generator"),
                  Setting("rate", int, 500, "messages/s per CPU"),
                  Setting("burst", int, 32, "messages per burst"),
                  Setting("size_max", int, 2048, "largest payload in bytes")))


def _audit(idx: int, group: int, scale: float):
    def factory(s: Mapping[str, Any]) -> GeneratorProfile:
        gen = {"duration_ns": int(s["duration_s"] * NS), "count": 0, "rate": _n(s["rate"], scale),
               "size_min": s["size_min"], "size_max": s["size_max"], "context": "kthread", "path": "direct",
               "burst": 16}
        return GeneratorProfile("audit", idx, 1, group, (gen,))

    return EmulatorSpec(
        "audit", "sustained high rate of larger records (256..1024 bytes) for a duration",
        idx, 1, group, factory,
        settings=(Setting("duration_s", float, 2.0, "how long to generate"),
                  Setting("rate", int, 20000, "records/s per CPU"),
                  Setting("size_min", int, 256, "smallest record"),
                  Setting("size_max", int, 1024, "largest record")))


def _irq(idx: int, group: int, scale: float):
    def factory(s: Mapping[str, Any]) -> GeneratorProfile:
        hard = {"count": _n(s["count"], scale), "rate": _n(s["rate"], scale), "size_min": 32, "size_max": 128,
                "context": "hardirq", "path": "cbus", "burst": s["burst"]}
        timer = dict(hard, context="timer")
        return GeneratorProfile("irq", idx, 1, group, (hard, timer))

    return EmulatorSpec(
        "irq", "producers in hard-IRQ (hrtimer) and timer context through CBUS",
        idx, 1, group, factory,
        settings=(Setting("count", int, 2000, "messages per CPU per generator"),
                  Setting("rate", int, 10000, "messages/s per CPU"),
                  Setting("burst", int, 4, "messages per interrupt")))


@hookimpl
def lab_emulators_register(registry: EmulatorRegistry, settings: Mapping[str, Any]) -> None:
    scale = settings["scale"]
    registry.add_emulator(_proc_events(0x12, 18, scale))
    registry.add_emulator(_uevent(0x14, 20, scale))
    registry.add_emulator(_audit(0x16, 22, scale))
    registry.add_emulator(_irq(0x18, 24, scale))
