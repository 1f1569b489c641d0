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

One reading can be off: a guest booting on a saturated host may fail to
calibrate its TSC against the PIT and derive a wrong value, which would then
stick until the host reboots.  So the first READINGS guests calibrate
themselves, each records what it found, and later guests get the median.
"""

from __future__ import annotations

import json
from pathlib import Path

from lab.host.cache import content_key, write_json_atomic

__all__ = ["lpj_file", "read_lpj", "record_lpj", "READINGS"]

#: Self-calibrated boots whose median later guests are given.
READINGS = 3


def _host_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def lpj_file(cache: Path, kernel_release: str) -> Path:
    """Where this host boot's value for guests of ``kernel_release`` lives."""
    key = content_key({"host_boot_id": _host_boot_id(), "kernel": kernel_release})
    return cache / "calibration" / f"lpj-{key}.json"


def _readings(path: Path) -> list[int]:
    try:
        values = json.loads(path.read_text()).get("readings")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(values, list):
        return []
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0]


def read_lpj(path: Path) -> int | None:
    """The median of the first READINGS readings, or None while there are fewer (or the file is damaged)."""
    values = sorted(_readings(path)[:READINGS])
    return values[len(values) // 2] if len(values) == READINGS else None


def record_lpj(path: Path, lpj: int) -> None:
    """Add one self-calibrated guest's value, until READINGS are kept.

    Only a guest booted without ``lpj=`` measured anything; one given the
    value reports it back unchanged, so its caller must not record it.
    Concurrent guests may race on the file: a lost reading only means one
    more guest calibrates itself.
    """
    values = _readings(path)
    if lpj > 0 and len(values) < READINGS:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"readings": [*values, lpj]})
