"""A vmcore of every guest kernel that panics (issue 15).

Every scenario guest gets a pvpanic device, QEMU's vmcoreinfo device and a
second QMP monitor that a :class:`lab.guest.panic.PanicWatcher` of this
plugin listens on (``lab_qemu_args_add``).  Once the guest is ready for a
scenario (``lab_guest_ready``) the watcher dumps to
``<results>/consoles/<guest>.<scenario>.vmcore`` on ``GUEST_PANICKED``,
with ``….vmcore.json`` beside it (size, seconds to write, the modules'
debug files, the kernel), then quits QEMU: the scenario ends as a crashed
guest as before, and its record names the dump (``data.vmcore``).
``cnlab debug VMCORE`` reads the module's state out of it.

Opt out with ``[plugins.vmcore] enabled = false``, ``CNLAB_VMCORE=0``
(a panic then just ends the guest, no file), or ``-p no:vmcore`` (no
pvpanic device at all).  ``max_mb`` bounds a dump: an ELF dump is as big
as the guest's RAM, and a bigger guest is not dumped (the sidecar says so).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lab import hookimpl
from lab.config import Setting
from lab.guest.panic import DEFAULT_MAX_MB, PanicWatcher
from lab.image.module import debug_copy

#: ``CNLAB_VMCORE=0`` turns the dumps off for a run (the pvpanic device stays, a panic just ends the guest).
ENV = "CNLAB_VMCORE"


class _State:
    enabled = True
    max_mb = DEFAULT_MAX_MB
    #: socket path -> watcher, for the guests this process made specs for
    watchers: dict[str, PanicWatcher] = {}


def vmcore_path(log_dir: Path, guest_name: str, scenario: str) -> Path:
    """Where a guest's dump goes when it panics during ``scenario``."""
    return log_dir / f"{guest_name}.{scenario}.vmcore"


@hookimpl
def lab_settings_declare() -> list[Setting]:
    """``enabled`` and ``max_mb``."""
    return [Setting("enabled", bool, True, "write a vmcore when a guest kernel panics (CNLAB_VMCORE=0 also "
                                            "turns it off)"),
            Setting("max_mb", int, DEFAULT_MAX_MB, "largest guest RAM to dump, in MiB (an ELF dump is as big "
                                                   "as the guest's RAM)", min=64, max=16384)]


@hookimpl
def lab_plugin_configure(config, settings: Mapping[str, Any]) -> None:
    """Read the settings and the environment's opt-out."""
    _State.enabled = bool(settings.get("enabled", True)) and os.environ.get(ENV, "1") != "0"
    _State.max_mb = int(settings.get("max_mb", DEFAULT_MAX_MB))


@hookimpl
def lab_qemu_args_add(config, shape) -> list[str]:
    """pvpanic, vmcoreinfo, pause on panic, and the watcher's monitor."""
    for path, old in list(_State.watchers.items()):
        if old.finished.is_set():
            del _State.watchers[path]
    watcher = PanicWatcher(_State.max_mb, _State.enabled)
    _State.watchers[str(watcher.socket_path)] = watcher
    return watcher.qemu_args()


def _watcher_of(guest) -> PanicWatcher | None:
    """The watcher whose monitor socket is on this guest's QEMU command line (None: a guest from elsewhere)."""
    for arg in getattr(getattr(guest, "spec", None), "qemu_extra", ()):
        for path, watcher in _State.watchers.items():
            if f"path={path}" in arg:
                return watcher
    return None


@hookimpl
def lab_guest_ready(guest, scenario, settings: Mapping[str, Any]) -> None:
    """Point the guest's watcher at this scenario's dump file."""
    watcher = _watcher_of(guest)
    if watcher is None:
        return
    watcher.attach(vmcore_path(guest.log_dir, guest.spec.name, scenario.name),
                   {"scenario": scenario.name, "guest": guest.spec.name,
                    "kernel": guest.spec.image.kernel.release,
                    "modules": [str(debug_copy(m)) for m in guest.spec.modules]})


@hookimpl
def lab_plugin_unconfigure(config) -> None:
    """Close the watchers of guests that never started."""
    for watcher in _State.watchers.values():
        if not watcher.finished.is_set():
            watcher.close()
    _State.watchers.clear()
