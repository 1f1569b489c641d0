"""Accelerator choice: KVM when it really works, else multi-threaded TCG.

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
from dataclasses import asdict, dataclass
from pathlib import Path

from .cache import write_json_atomic
from .deadline import Deadline
from .procs import spawn_owned, stop_process

__all__ = ["Accel", "choose_accel", "probe_kvm", "qemu_version"]

#: cnlab-init prints this and powers off when booted with cnlab.halt.
HALT_MARKER = "CNLAB-HALT"
#: A KVM boot to init takes about a second; this is generous.
KVM_PROBE_SECONDS = 20.0


@dataclass(frozen=True)
class Accel:
    """The accelerator guests run under and why it was chosen."""

    name: str  # "kvm" or "tcg"
    reason: str

    @property
    def slowdown(self) -> int:
        """How much slower than KVM guests run (syzkaller's TCG factor)."""
        return 1 if self.name == "kvm" else 10

    @property
    def timeout_scale(self) -> int:
        """Factor for general timeouts: ``min(slowdown, 3)``."""
        return min(self.slowdown, 3)

    def qemu_args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        # -cpu max gives the guest RDRAND, so its CRNG is ready at once.
        return ["-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max"]


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
        from .errors import HostSetupError

        raise HostSetupError(f"KVM requested but unusable: {verdict['reason']}")
    return Accel("tcg", f"KVM unusable: {verdict['reason']}; using TCG")


def describe(accel: Accel) -> dict:
    return asdict(accel) | {"slowdown": accel.slowdown}
