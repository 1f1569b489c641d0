"""Built-in kernel-subsystem emulators, driven by the lab module's generators.

``generator`` is the module's raw generator: every load shape is one of its
parameters (path, context, rate, payload range, bundling, bursts, CPU set,
group, count or duration).  With ``bursts = true`` a generator sends
``burst`` messages back to back ``rate`` times a second on each CPU ("64
messages, 200 times a second": ``burst = 64``, ``rate = 200``).  The others model a real subsystem, each on its
own even connector idx and its own group (even: on 6.6+ odd groups are open
to non-root, connector.md section 3):

=========== ======= ===== ============================================================
name        idx:val group shape
=========== ======= ===== ============================================================
generator   auto:1  2     any: one GEN_START config from its parameters
proc-events 0x12:1  18    fork/exec/exit storm: 3 kthread generators, fixed 40-byte events, bursts, every CPU
uevent      0x14:1  20    bursts of text-sized payloads 64..2048 bytes, low rate (softirq + kthread)
audit       0x16:1  22    sustained high rate of 256..1024-byte records for a duration
irq         0x18:1  24    hard-IRQ (hrtimer) and timer-context producers through CBUS
=========== ======= ===== ============================================================

Plugin settings (``[plugins.emulators]``): ``scale`` multiplies every
subsystem emulator's counts and rates (use < 1 under TCG); ``generator``'s
parameters are taken as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab import hookimpl, kabi
from lab.config import Setting
from lab.errors import PluginError
from lab.plugin import EmulatorRegistry, EmulatorSpec
from lab.plugin.objects import GeneratorProfile

NS = 1_000_000_000
GENERATOR_GROUP = 2


@hookimpl
def lab_settings_declare() -> list[Setting]:
    """``scale``: multiply the subsystem emulators' counts and rates."""
    return [Setting("scale", float, 1.0, "multiply every subsystem emulator's counts and rates (e.g. 0.2 under TCG)",
                    min=0.001, max=100.0)]


def _n(value: float, scale: float) -> int:
    return max(1, int(value * scale))


def _generator() -> EmulatorSpec:
    def factory(s: Mapping[str, Any]) -> GeneratorProfile:
        lo, hi = s["payload"]
        if lo > hi:
            raise PluginError(f"payload [{lo}, {hi}]: the first (smallest) must not exceed the second (largest)")
        cfg = {"path": s["path"], "context": s["context"], "rate": s["rate"], "count": s["count"],
               "duration_ns": int(s["duration"] * NS), "size_min": lo, "size_max": hi,
               "flags": (kabi.CNLAB_GEN_F_BUNDLE if s["bundle"] else 0) | (kabi.CNLAB_GEN_F_BURSTS if s["bursts"]
                                                                            else 0),
               "burst": s["burst"],
               "cpu_mask": sum(1 << c for c in s["cpus"])}
        return GeneratorProfile("generator", s["idx"], 1, s["group"], (cfg,))

    return EmulatorSpec(
        "generator", "the lab module's raw generator: every load shape is a parameter", 0x20, 1, GENERATOR_GROUP,
        factory,
        settings=(
            Setting("path", str, "cbus", "how messages are sent: through CBUS or a direct cn_netlink_send",
                    choices=("cbus", "direct")),
            Setting("context", str, "kthread", "the producer's context", choices=("kthread", "softirq", "timer",
                                                                                  "hardirq")),
            Setting("rate", int, 1000, "messages per second per CPU (0: as fast as possible)", min=0,
                    max=kabi.CNLAB_RATE_MAX),
            Setting("payload", list, [40, 40], "payload bytes, [smallest, largest]", item_type=int, min=32,
                    max=kabi.CNLAB_PAYLOAD_MAX, length=2),
            Setting("count", int, 0, "messages per CPU (0: run for the duration)", min=0, max=kabi.CNLAB_COUNT_MAX),
            Setting("duration", float, 0.0, "seconds to run (0: the scenario's duration)", min=0.0,
                    max=kabi.CNLAB_DURATION_MAX_NS / NS),
            Setting("bundle", bool, False, "CBUS sends a CPU's queued messages as bundles (fewer netlink messages)"),
            Setting("burst", int, 0, "most messages per wake-up (0: the module's default); with bursts, the "
                    "messages in each burst", min=0, max=kabi.CNLAB_BURST_MAX),
            Setting("bursts", bool, False, "burst mode: rate counts bursts per second per CPU, each of burst messages "
                    "sent back to back"),
            Setting("cpus", list, [], "CPUs to produce on (empty: every online CPU)", item_type=int, min=0,
                    max=kabi.CNLAB_MAX_CPUS - 1),
            Setting("group", int, GENERATOR_GROUP, "connector group the consumers join", min=kabi.CNLAB_GROUP_MIN,
                    max=kabi.CNLAB_GROUP_MAX),
            Setting("idx", int, 0, "connector idx, even (0: the engine picks a free one)", min=0, max=0xFFFE),
        ))


def _proc_events(idx: int, group: int, scale: float) -> EmulatorSpec:
    def factory(s: Mapping[str, Any]) -> GeneratorProfile:
        one = {"count": _n(s["count"], scale), "rate": _n(s["rate"], scale), "burst": s["burst"],
               "size_min": 40, "size_max": 40, "context": "kthread", "path": "direct"}
        # fork, exec and exit: three generators with the same shape, interleaving on every CPU
        return GeneratorProfile("proc-events", idx, 1, group, (one, one, one))

    return EmulatorSpec(
        "proc-events", "fork/exec/exit storms: small fixed-size events from every CPU (3 generators)",
        idx, 1, group, factory,
        settings=(Setting("count", int, 2000, "events per CPU per generator", min=1, max=kabi.CNLAB_COUNT_MAX),
                  Setting("rate", int, 20000, "events/s per CPU per generator", min=1, max=kabi.CNLAB_RATE_MAX),
                  Setting("burst", int, 64, "events per wake-up (storm burstiness)", min=1,
                          max=kabi.CNLAB_BURST_MAX)))


def _uevent(idx: int, group: int, scale: float) -> EmulatorSpec:
    def factory(s: Mapping[str, Any]) -> GeneratorProfile:
        base = {"count": _n(s["count"], scale), "rate": _n(s["rate"], scale), "burst": s["burst"],
                "size_min": 64, "size_max": s["size_max"], "path": "direct"}
        return GeneratorProfile("uevent", idx, 1, group, (dict(base, context="kthread"),
                                                           dict(base, context="softirq")))

    return EmulatorSpec(
        "uevent", "bursts of KEY=value-sized payloads up to 2 KB (device add/remove storms)",
        idx, 1, group, factory,
        settings=(Setting("count", int, 300, "messages per CPU per generator", min=1, max=kabi.CNLAB_COUNT_MAX),
                  Setting("rate", int, 500, "messages/s per CPU", min=1, max=kabi.CNLAB_RATE_MAX),
                  Setting("burst", int, 32, "messages per burst", min=1, max=kabi.CNLAB_BURST_MAX),
                  Setting("size_max", int, 2048, "largest payload in bytes", min=64, max=kabi.CNLAB_PAYLOAD_MAX)))


def _audit(idx: int, group: int, scale: float) -> EmulatorSpec:
    def factory(s: Mapping[str, Any]) -> GeneratorProfile:
        if s["size_min"] > s["size_max"]:
            raise PluginError(f"size_min {s['size_min']} is larger than size_max {s['size_max']}")
        gen = {"duration_ns": int(s["duration_s"] * NS), "count": 0, "rate": _n(s["rate"], scale),
               "size_min": s["size_min"], "size_max": s["size_max"], "context": "kthread", "path": "direct",
               "burst": 16}
        return GeneratorProfile("audit", idx, 1, group, (gen,))

    return EmulatorSpec(
        "audit", "sustained high rate of larger records (256..1024 bytes) for a duration",
        idx, 1, group, factory,
        settings=(Setting("duration_s", float, 2.0, "how long to generate", min=0.01, max=600.0),
                  Setting("rate", int, 20000, "records/s per CPU", min=1, max=kabi.CNLAB_RATE_MAX),
                  Setting("size_min", int, 256, "smallest record", min=32, max=kabi.CNLAB_PAYLOAD_MAX),
                  Setting("size_max", int, 1024, "largest record", min=32, max=kabi.CNLAB_PAYLOAD_MAX)))


def _irq(idx: int, group: int, scale: float) -> EmulatorSpec:
    def factory(s: Mapping[str, Any]) -> GeneratorProfile:
        hard = {"count": _n(s["count"], scale), "rate": _n(s["rate"], scale), "size_min": 32, "size_max": 128,
                "context": "hardirq", "path": "cbus", "burst": s["burst"]}
        timer = dict(hard, context="timer")
        return GeneratorProfile("irq", idx, 1, group, (hard, timer))

    return EmulatorSpec(
        "irq", "producers in hard-IRQ (hrtimer) and timer context through CBUS",
        idx, 1, group, factory,
        settings=(Setting("count", int, 2000, "messages per CPU per generator", min=1, max=kabi.CNLAB_COUNT_MAX),
                  Setting("rate", int, 10000, "messages/s per CPU", min=1, max=kabi.CNLAB_RATE_MAX),
                  Setting("burst", int, 4, "messages per interrupt", min=1, max=kabi.CNLAB_BURST_MAX)))


@hookimpl
def lab_emulators_register(registry: EmulatorRegistry, settings: Mapping[str, Any]) -> None:
    """The raw generator and the four subsystem emulators."""
    scale = settings["scale"]
    registry.add_emulator(_generator())
    registry.add_emulator(_proc_events(0x12, 18, scale))
    registry.add_emulator(_uevent(0x14, 20, scale))
    registry.add_emulator(_audit(0x16, 22, scale))
    registry.add_emulator(_irq(0x18, 24, scale))
