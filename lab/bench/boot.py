"""``cnlab bench boot``: boot-to-SSH-ready against the boot floor, side by side.

The floor is the same kernel and initramfs, with no disks or network, told
to power off as soon as init runs (``cnlab.halt``): what QEMU plus the
kernel cost before any of our userspace.  Boots and floors alternate so that both see the same host load.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from lab.errors import BootError
from lab.guest.calibration import read_lpj
from lab.guest.labsetup import Lab
from lab.guest.machine import BOOT_SECONDS, QEMU_BINARY, Guest
from lab.guest.qemu_argv import GuestShape, kernel_cmdline, machine_args
from lab.host.procs import spawn_owned, stop_process

__all__ = ["run_boot_bench", "summarise"]


def summarise(samples: list[float]) -> dict:
    """min/median/max of a list of seconds, rounded to milliseconds."""
    return {
        "runs": len(samples),
        "min": round(min(samples), 3),
        "median": round(statistics.median(samples), 3),
        "max": round(max(samples), 3),
    }


def _floor_once(lab: Lab, shape: GuestShape, workdir: Path) -> float:
    """Seconds from spawning QEMU to its exit, for an init that powers off at once."""
    image = lab.image
    console = workdir / "floor.console.log"
    calibration = lab.guest_spec(shape, with_module=False).calibration
    lpj = read_lpj(calibration) if calibration else None  # the same head start the guests get
    argv = [
        QEMU_BINARY,
        *machine_args(shape, lab.accel),
        "-kernel", str(image.boot_kernel), "-initrd", str(image.initramfs),
        "-append", kernel_cmdline(["cnlab.halt"] + ([f"lpj={lpj}"] if lpj else [])),
        "-chardev", f"file,id=console,path={console}", "-serial", "chardev:console",
    ]
    started = time.monotonic()
    proc = spawn_owned(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=BOOT_SECONDS * lab.accel.timeout_scale)
    finally:
        stop_process(proc)
    elapsed = time.monotonic() - started
    if "CNLAB-HALT" not in console.read_text(errors="replace"):
        raise BootError("floor boot did not reach init", console_tail=console.read_text(errors="replace")[-2000:])
    return elapsed


def run_boot_bench(lab: Lab, runs: int, shape: GuestShape, json_path: Path) -> int:
    spec = lab.guest_spec(shape, name="bench")
    print(f"cnlab bench boot: {runs} boots + {runs} floors, {shape.cpus} vCPUs, accelerator {spec.accel.name}")
    ready, ssh, floor = [], [], []
    workdir = Path(tempfile.mkdtemp(prefix="cnlab-bench-"))
    for i in range(runs):
        floor.append(_floor_once(lab, shape, workdir))
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
    shutil.rmtree(workdir, ignore_errors=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")
    return 0
