"""The guest kernel's real proc connector (``cn_proc``) as a live source.

idx 1, val 1, group 1 (CN_IDX_PROC).  Traffic comes from a process storm in
the guest (``storm.py``: fork, exec ``/bin/true``, exit); consumers send
``PROC_CN_MCAST_LISTEN`` first, as the kernel requires.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab import hookimpl
from lab.config import Setting
from lab.plugin import GUEST_PLUGIN_DIR, EmulatorRegistry, EmulatorSpec, GuestFile
from lab.plugin.objects import LiveSource

from .guestside import HERE

CN_IDX_PROC = 1
CN_VAL_PROC = 1


@hookimpl
def lab_guest_files_add(config) -> list[GuestFile]:
    return [GuestFile(HERE / "storm.py", f"{GUEST_PLUGIN_DIR}/storm.py", 0o755)]


@hookimpl
def lab_emulators_register(registry: EmulatorRegistry, settings: Mapping[str, Any]) -> None:
    def factory(s: Mapping[str, Any]) -> LiveSource:
        driver = ("python3", f"{GUEST_PLUGIN_DIR}/storm.py", "--seconds", str(s["seconds"]),
                  "--workers", str(s["workers"]), "--exec" if s["exec"] else "--no-exec")
        return LiveSource("cn_proc", CN_IDX_PROC, CN_VAL_PROC, 1, driver, listen=True)

    registry.add_emulator(EmulatorSpec(
        "cn_proc", "the real proc connector, driven by a fork/exec/exit storm in the guest",
        CN_IDX_PROC, CN_VAL_PROC, 1, factory, real=True,
        settings=(Setting("seconds", float, 2.0, "length of the process storm"),
                  Setting("workers", int, 2, "parallel forking workers"),
                  Setting("exec", bool, True, "children exec /bin/true (adds EXEC events)"))))
