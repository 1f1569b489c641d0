"""Accelerator choice: KVM when it really works, else TCG.

Under TCG a guest runs multi-threaded (a host thread per vCPU) when it runs
alone or while the vCPUs of every guest running at once fit the host's
cores; beyond that, each guest runs its vCPUs round-robin in one host
thread.  Overcommitted multi-threaded TCG guests burn the host's cores
spinning on vCPUs the host has descheduled, and take them from each other
(measured on 2 cores: two 2-vCPU guests booting at once took 3.97-4.36 s to
SSH-ready multi-threaded, 3.03-3.06 s single-threaded, and the quick set at
``-n 2`` went from 28.5 to 25.8 s with lower latencies).  A guest alone
keeps a thread per vCPU, overcommitted or not: single-threaded it would
have one core, and the hotplug lab test's 4-vCPU guest then fell behind.
The guest still has all its CPUs; they take turns at translation-block
boundaries, and a vCPU spinning on a lock (PAUSE) hands over at once.

``/dev/kvm`` can exist and still hang guests (nested virtualisation), so the
verdict comes from booting SeaBIOS under KVM with a deadline and waiting for
the end of its POST on the debug console.  The verdict is cached per host
kernel and QEMU version, and every run reports which accelerator it used.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lab.deadline import Deadline
from lab.host.cache import write_json_atomic
from lab.host.procs import spawn_owned, stop_process

__all__ = ["Accel", "TCG_THREADS", "choose_accel", "probe_kvm", "qemu_version", "tcg_threads_for"]

#: cnlab-init prints this and powers off when booted with cnlab.halt.
HALT_MARKER = "CNLAB-HALT"
#: A KVM boot to init takes about a second; this is generous.
KVM_PROBE_SECONDS = 20.0
#: Choices for how TCG runs a guest's vCPUs (``--tcg-threads``).
TCG_THREADS = ("auto", "multi", "single")


def tcg_threads_for(guests: int, vcpus: int, choice: str = "auto", host_cpus: int | None = None) -> str:
    """``multi`` or ``single`` for ``guests`` guests of ``vcpus`` vCPUs running at once:
    ``choice`` itself, or for ``auto`` multi when one guest runs alone (it may use
    every core) or when all their vCPUs fit the host's cores."""
    if choice not in TCG_THREADS:
        raise ValueError(f"unknown TCG threading {choice!r} (use {', '.join(TCG_THREADS)})")
    if choice != "auto":
        return choice
    return "multi" if guests <= 1 or guests * vcpus <= (host_cpus or os.cpu_count() or 1) else "single"


@dataclass(frozen=True)
class Accel:
    """The accelerator guests run under and why it was chosen."""

    name: str  # "kvm" or "tcg"
    reason: str
    threads: str = "multi"  # TCG only: "multi" (a host thread per vCPU) or "single"

    @property
    def slowdown(self) -> int:
        """How much slower than KVM guests run (syzkaller's TCG factor)."""
        return 1 if self.name == "kvm" else 10

    @property
    def timeout_scale(self) -> int:
        """Factor for general timeouts: ``min(slowdown, 3)``."""
        return min(self.slowdown, 3)

    @property
    def label(self) -> str:
        """``kvm``, ``tcg`` or ``tcg (single-threaded)``: what a report should name."""
        return self.name if self.name == "kvm" or self.threads == "multi" else f"{self.name} (single-threaded)"

    def for_guests(self, guests: int, vcpus: int, choice: str = "auto") -> Accel:
        """This accelerator for one of ``guests`` guests of ``vcpus`` vCPUs running at once."""
        if self.name == "kvm":
            return self
        return replace(self, threads=tcg_threads_for(guests, vcpus, choice))

    def qemu_args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        # -cpu max gives the guest RDRAND, so its CRNG is ready at once.
        return ["-accel", f"tcg,thread={self.threads},tb-size=256", "-cpu", "max"]


def qemu_version(binary: str = "qemu-system-x86_64") -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return "missing"
    return out.splitlines()[0] if out else "unknown"


def _kvm_usable_device() -> str | None:
    """Why /dev/kvm cannot be used, or None if it can be opened."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm not readable and writable by this user"
    return None


def probe_kvm(kernel: Path, initrd: Path, binary: str = "qemu-system-x86_64",
              seconds: float = KVM_PROBE_SECONDS) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM to an init that powers off at once.

    True only if QEMU exits cleanly with the init's marker on the console
    before the deadline: a /dev/kvm that opens but hangs guests fails here.
    """
    problem = _kvm_usable_device()
    if problem:
        return False, problem
    with tempfile.TemporaryDirectory(prefix="cnlab-kvm-") as tmp:
        console = Path(tmp) / "console.log"
        argv = [
            binary, "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 cnlab.halt",
            "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
        ]
        deadline = Deadline(seconds, "a kernel boot under KVM")
        proc = spawn_owned(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            status = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False, f"KVM guest hung (no power-off within {seconds:.0f} s)"
        finally:
            stop_process(proc)
        text = console.read_text(errors="replace") if console.exists() else ""
        if status == 0 and HALT_MARKER in text:
            return True, f"KVM works (test boot in {deadline.elapsed():.2f} s)"
        return False, f"KVM test boot failed (QEMU status {status})"


def choose_accel(requested: str, cache: Path, kernel: Path, initrd: Path,
                 binary: str = "qemu-system-x86_64") -> Accel:
    """Resolve ``auto``/``kvm``/``tcg`` to an :class:`Accel`, probing KVM once per host."""
    if requested == "tcg":
        return Accel("tcg", "requested")
    if requested not in ("auto", "kvm"):
        raise ValueError(f"unknown accelerator {requested!r} (use auto, kvm or tcg)")
    key = {"host_kernel": os.uname().release, "qemu": qemu_version(binary)}
    verdict_file = cache / "accel.json"
    verdict = None
    if verdict_file.exists():
        try:
            stored = json.loads(verdict_file.read_text())
            if stored.get("key") == key:
                verdict = stored
        except ValueError:
            verdict = None
    if verdict is None or _kvm_usable_device() is not None:
        works, reason = probe_kvm(kernel, initrd, binary)
        verdict = {"key": key, "kvm_works": works, "reason": reason}
        write_json_atomic(verdict_file, verdict)
    if verdict["kvm_works"]:
        return Accel("kvm", verdict["reason"])
    if requested == "kvm":
        from lab.errors import HostSetupError

        raise HostSetupError(f"KVM requested but unusable: {verdict['reason']}")
    return Accel("tcg", f"KVM unusable: {verdict['reason']}; using TCG")


def describe(accel: Accel) -> dict:
    return asdict(accel) | {"slowdown": accel.slowdown}
