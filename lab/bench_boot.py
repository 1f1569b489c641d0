"""``cnlab bench boot``: boot-to-SSH-ready against the boot floor, side by side.

The floor is the same kernel and initramfs told to power off as soon as init
runs (``cnlab.halt``): what QEMU plus the kernel cost before any of our
userspace.  Boots and floors alternate so that both see the same host load.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

from .guest import Guest
from .labsetup import Lab
from .procs import spawn_owned, stop_process
from .qemu_argv import GuestShape

__all__ = ["run_boot_bench", "summarise"]


def summarise(samples: list[float]) -> dict:
    """min/median/max of a list of seconds, rounded to milliseconds."""
    return {
        "runs": len(samples),
        "min": round(min(samples), 3),
        "median": round(statistics.median(samples), 3),
        "max": round(max(samples), 3),
    }


def _floor_once(lab: Lab, shape: GuestShape) -> float:
    spec = lab.guest_spec(shape, name="floor", with_module=False, cmdline=("cnlab.halt",))
    guest = Guest(spec)
    try:
        guest.write_initrd()
        # Unpaused, and the QMP/readiness sockets are not needed: QEMU just runs and exits.
        argv = guest.argv(paused=False)
        argv = _without_chardev_sockets(argv)
        started = time.monotonic()
        proc = spawn_owned(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=guest.boot_seconds)
        finally:
            stop_process(proc)
        return time.monotonic() - started
    finally:
        guest.stop()


def _without_chardev_sockets(argv: list[str]) -> list[str]:
    """Drop the ready and QMP sockets (nobody listens on them for a floor boot)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if arg == "-chardev" and (nxt.startswith("socket,id=ready") or nxt.startswith("socket,id=qmp")):
            skip = True
            continue
        if arg in ("-serial", "-mon") and nxt in ("chardev:ready", "chardev=qmp,mode=control"):
            skip = True
            continue
        out.append(arg)
    return out


def run_boot_bench(lab: Lab, runs: int, shape: GuestShape, json_path: Path) -> int:
    spec = lab.guest_spec(shape, name="bench")
    print(f"cnlab bench boot: {runs} boots + {runs} floors, {shape.cpus} vCPUs, accelerator {spec.accel.name}")
    ready, ssh, floor = [], [], []
    for i in range(runs):
        floor.append(_floor_once(lab, shape))
        with Guest(spec) as guest:
            ready.append(guest.timing.ready)
            ssh.append(guest.timing.ssh)
        print(f"  run {i + 1}: floor {floor[-1]:.2f} s, ready {ready[-1]:.2f} s, SSH-ready {ssh[-1]:.2f} s")
    result = {
        "accel": spec.accel.name,
        "cpus": shape.cpus,
        "kernel": spec.image.kernel.release,
        "floor_s": summarise(floor),
        "ready_s": summarise(ready),
        "ssh_ready_s": summarise(ssh),
        "ratio_ssh_ready_to_floor": round(statistics.median(ssh) / statistics.median(floor), 2),
    }
    print(f"{'':12}{'min':>8}{'median':>8}{'max':>8}")
    for label, key in (("floor", "floor_s"), ("ready", "ready_s"), ("SSH-ready", "ssh_ready_s")):
        row = result[key]
        print(f"{label:12}{row['min']:8.2f}{row['median']:8.2f}{row['max']:8.2f}")
    print(f"median SSH-ready / median floor = {result['ratio_ssh_ready_to_floor']:.2f}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")
    return 0
