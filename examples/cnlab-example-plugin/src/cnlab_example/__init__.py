"""cnlab-example-plugin: a heartbeat emulator and a counting consumer.

Registered through the ``cnlab`` entry point ``example`` (pyproject.toml), so
its plugin name is ``example``: ``[plugins.example]`` in the lab config and
``-p no:example`` to block it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lab import hookimpl
from lab.config import Setting
from lab.plugin import GUEST_PLUGIN_DIR, ConsumerSpec, EmulatorSpec, GuestFile
from lab.plugin.objects import GeneratorProfile, GuestProgram

HEARTBEAT_IDX = 0x1A  # even: only root can join (connector.md section 3)
HEARTBEAT_VAL = 1
HEARTBEAT_GROUP = 26
HERE = Path(__file__).resolve().parent


@hookimpl
def lab_settings_declare() -> list[Setting]:
    return [Setting("beat_rate", int, 50, "heartbeats per second per CPU")]


@hookimpl
def lab_emulators_register(registry, settings: Mapping[str, Any]) -> None:
    def factory(s: Mapping[str, Any]) -> GeneratorProfile:
        beat = {"count": s["beats"], "rate": settings["beat_rate"], "size_min": 48, "size_max": 48,
                "context": "softirq", "path": "direct", "burst": 1}
        return GeneratorProfile("heartbeat", HEARTBEAT_IDX, HEARTBEAT_VAL, HEARTBEAT_GROUP, (beat,))

    registry.add_emulator(EmulatorSpec(
        "heartbeat", "steady 48-byte heartbeats from softirq context on every CPU",
        HEARTBEAT_IDX, HEARTBEAT_VAL, HEARTBEAT_GROUP, factory,
        settings=(Setting("beats", int, 100, "heartbeats per CPU"),)))


@hookimpl
def lab_consumers_register(registry) -> None:
    def factory(s: Mapping[str, Any]) -> GuestProgram:
        return GuestProgram("beat-counter", "example_counter.py", {"group": s["group"], "seconds": s["seconds"]},
                            protocol="oneshot")

    registry.add_consumer(ConsumerSpec(
        "beat-counter", "counts heartbeats per CPU (prints JSON)", factory,
        settings=(Setting("group", int, HEARTBEAT_GROUP, "group to join"),
                  Setting("seconds", float, 5.0, "how long to listen"))))


@hookimpl
def lab_guest_files_add(config) -> list[GuestFile]:
    return [GuestFile(HERE / "counter.py", f"{GUEST_PLUGIN_DIR}/example_counter.py", 0o755)]


@hookimpl
def lab_result_check(scenario, data: Mapping[str, Any]) -> list[str]:
    """The built-in runner collects every consumer's JSON under data["runner"]["consumers"]."""
    if "beat-counter" not in scenario.consumers:
        return []
    reports = [c for c in (data.get("runner") or {}).get("consumers", ()) if c.get("name") == "beat-counter"]
    if not reports or not reports[0].get("beats"):
        return ["beat-counter saw no heartbeats"]
    return []
