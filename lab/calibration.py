"""The guest kernel's delay-loop calibration, measured once per host boot.

Every boot, the kernel calibrates ``loops_per_jiffy``: the boot CPU from the
TSC's frequency, each secondary CPU with a timed loop.  Under single-threaded
TCG the secondary CPUs' loop fails ("calibrate_delay_direct() failed") and
the fallback takes about 0.15 s and ends with a wrong value.  The guest init
reports the boot CPU's value on its readiness line; it depends only on the
host's TSC and the guest kernel's HZ, so later TCG guests of the same kernel
get it as ``lpj=`` (a standard kernel parameter for skipping calibration).
Measured: single-threaded 2-vCPU boots to SSH-ready 2.44-2.80 s without it,
2.17-2.32 s with it.  The value is keyed by the host's boot id, so a host
reboot (or another host sharing the cache) measures afresh.
"""

from __future__ import annotations

import json
from pathlib import Path

from .cache import content_key, write_json_atomic

__all__ = ["lpj_file", "read_lpj", "record_lpj"]


def _host_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def lpj_file(cache: Path, kernel_release: str) -> Path:
    """Where this host boot's value for guests of ``kernel_release`` lives."""
    key = content_key({"host_boot_id": _host_boot_id(), "kernel": kernel_release})
    return cache / "calibration" / f"lpj-{key}.json"


def read_lpj(path: Path) -> int | None:
    """The recorded value, or None (nothing recorded, or a damaged file)."""
    try:
        value = json.loads(path.read_text()).get("lpj")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def record_lpj(path: Path, lpj: int) -> None:
    """Keep the first value a guest measured (later guests are given it, so they measure nothing)."""
    if lpj > 0 and read_lpj(path) is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"lpj": lpj})
