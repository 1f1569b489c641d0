"""``cnlab bench boot``: the boot floor, a cold boot and a restore, side by side.

The floor is the same kernel and initramfs, with no disks or network, told
to power off as soon as init runs (``cnlab.halt``): what QEMU plus the
kernel cost before any of our userspace.  A cold boot boots the guest to
SSH-ready; a restore starts it from its saved state (``lab.guest.snapshot``)
to SSH-ready.  The three alternate so that all see the same host load.
"""

from __future__ import annotations

import dataclasses
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
from lab.guest.machine import BOOT_SECONDS, QEMU_BINARY, Guest, GuestSpec
from lab.guest.qemu_argv import GuestShape, kernel_cmdline, machine_args
from lab.guest.snapshot import SnapshotStore, snapshot_for
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


def _boot_once(spec: GuestSpec) -> Guest:
    """Start and stop one guest of ``spec``; the stopped guest (its timings and how it started)."""
    with Guest(spec) as guest:
        pass
    return guest


def run_boot_bench(lab: Lab, runs: int, shape: GuestShape, json_path: Path) -> int:
    """Floor, cold boot and restore side by side: ``runs`` of each, interleaved so all see the same load.

    Prints medians, min, max and ratios and writes them to ``json_path``.  The saved state the restores
    use is made (or found) before the timed runs; its size on disk is reported.
    """
    cold_spec = dataclasses.replace(lab.guest_spec(shape, name="bench", programs=False), snapshots=None)
    restore_spec = dataclasses.replace(cold_spec, snapshots=lab.cache / "snapshots")
    print(f"cnlab bench boot: {runs} floors + {runs} cold boots + {runs} restores, {shape.cpus} vCPUs, "
          f"accelerator {cold_spec.accel.label}")
    made = time.monotonic()
    first = _boot_once(restore_spec)  # saves the state if there is none
    made = time.monotonic() - made
    snapshot = snapshot_for(restore_spec)
    if first.timing.mode != "restore" or snapshot is None:
        raise BootError(f"cnlab bench boot: no guest could be restored ({first.restore_failure or 'saving failed'})")
    disk = SnapshotStore(restore_spec.snapshots).disk_bytes(snapshot.key)
    print(f"  saved state {snapshot.key}: {disk / 2**20:.1f} MiB on disk ({snapshot.meta['sizes']['ram'] / 2**20:.0f}"
          f" MiB RAM file, sparse; {snapshot.meta['sizes']['state'] / 2**10:.0f} KiB device state); first restore "
          f"{made:.2f} s")
    floor, cold_ready, cold_ssh, res_loaded, res_ready, res_ssh, fallbacks = [], [], [], [], [], [], []
    workdir = Path(tempfile.mkdtemp(prefix="cnlab-bench-"))
    try:
        for i in range(runs):
            floor.append(_floor_once(lab, shape, workdir))
            cold = _boot_once(cold_spec)
            cold_ready.append(cold.timing.ready)
            cold_ssh.append(cold.timing.ssh)
            restored = _boot_once(restore_spec)
            if restored.timing.mode != "restore":
                fallbacks.append(restored.restore_failure or restored.timing.mode)
                print(f"  run {i + 1}: the restore fell back to a cold boot: {fallbacks[-1]}")
                continue
            res_loaded.append(restored.timing.marks["state_loaded"])
            res_ready.append(restored.timing.ready)
            res_ssh.append(restored.timing.ssh)
            print(f"  run {i + 1}: floor {floor[-1]:.2f} s, cold SSH-ready {cold_ssh[-1]:.2f} s, "
                  f"restore SSH-ready {res_ssh[-1]:.3f} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not res_ssh:
        raise BootError(f"cnlab bench boot: every restore fell back to a cold boot ({fallbacks[-1]})")
    median = statistics.median
    result = {
        "accel": cold_spec.accel.name,
        "tcg_threads": cold_spec.accel.threads if cold_spec.accel.name == "tcg" else None,
        "cpus": shape.cpus,
        "memory_mb": shape.memory_mb,
        "kernel": cold_spec.image.kernel.release,
        "floor_s": summarise(floor),
        "ready_s": summarise(cold_ready),
        "ssh_ready_s": summarise(cold_ssh),
        "restore_state_loaded_s": summarise(res_loaded),
        "restore_ready_s": summarise(res_ready),
        "restore_ssh_ready_s": summarise(res_ssh),
        "ratio_ssh_ready_to_floor": round(median(cold_ssh) / median(floor), 2),
        "ratio_restore_to_cold": round(median(res_ssh) / median(cold_ssh), 3),
        "ratio_restore_to_floor": round(median(res_ssh) / median(floor), 3),
        "restore_fallbacks": fallbacks,
        "snapshot": {"key": snapshot.key, "disk_bytes": disk, "ram_file_bytes": snapshot.meta["sizes"]["ram"],
                     "state_bytes": snapshot.meta["sizes"]["state"], "first_restore_s": round(made, 3)},
    }
    print(f"{'':24}{'min':>8}{'median':>8}{'max':>8}")
    for label, key in (("floor", "floor_s"), ("cold: ready", "ready_s"), ("cold: SSH-ready", "ssh_ready_s"),
                       ("restore: state loaded", "restore_state_loaded_s"), ("restore: ready", "restore_ready_s"),
                       ("restore: SSH-ready", "restore_ssh_ready_s")):
        row = result[key]
        print(f"{label:24}{row['min']:8.3f}{row['median']:8.3f}{row['max']:8.3f}")
    print(f"median SSH-ready: cold / floor = {result['ratio_ssh_ready_to_floor']:.2f}, restore / cold = "
          f"{result['ratio_restore_to_cold']:.3f}, restore / floor = {result['ratio_restore_to_floor']:.3f}")
    if fallbacks:
        print(f"WARNING: {len(fallbacks)} of {runs} restores fell back to cold boots")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")
    return 0 if not fallbacks else 1
