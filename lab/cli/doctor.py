"""``cnlab doctor``: the host as the lab sees it, and the fix for each problem.

Every check is a function of a :class:`HostProbe` (the facts: packages,
QEMU, ``/dev/kvm``, cores, disk, cache, kernel, calibration) and returns a
:class:`Finding`; tests pass a fake probe.  A finding is ``ok``, ``info``,
``warn`` (cnlab works, but slower or with a caveat) or ``fail`` (something
cnlab needs is missing: the command exits 1).  Nothing here builds, boots or
installs anything; standard library only, so ``python3 -m lab doctor`` runs
before the set-up.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from lab.errors import LabError
from lab.guest.accel import qemu_version, tcg_threads_for
from lab.guest.calibration import READINGS, lpj_file
from lab.host.inventory import take_inventory
from lab.host.packages import REQUIRED_PACKAGES, install_command, missing_packages

__all__ = ["Finding", "Probe", "HostProbe", "run_checks", "print_findings", "LEVELS", "MIN_FREE", "LOW_FREE"]

LEVELS = ("ok", "info", "warn", "fail")
#: Below this much free disk for the cache, a cold build fails (kernel, disks, a root tree mid-build).
MIN_FREE = 1 << 30
#: Below this, a second kernel or image recipe will not fit for long.
LOW_FREE = 3 << 30
#: Above this, the cache is worth a prune.
BIG_CACHE = 4 << 30
#: The default ``cnlab run``: this many guests of this many vCPUs at once.
RUN_GUESTS, RUN_VCPUS = 2, 2


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, how it stands, and (for warn/fail) the fix."""

    check: str
    level: str
    summary: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}")


class Probe(Protocol):
    """The host facts the checks read (:class:`HostProbe` reads the real host)."""

    cache: Path

    def missing_packages(self) -> list[str]: ...
    def qemu_version(self) -> str: ...
    def kvm_device_problem(self) -> str | None: ...
    def cpu_has_virtualisation(self) -> bool: ...
    def kvm_verdict(self) -> dict | None: ...
    def cpu_count(self) -> int: ...
    def disk_free(self) -> int: ...
    def cache_usage(self) -> tuple[int, int]: ...
    def kernel_release(self) -> str: ...
    def headers_dir(self, release: str) -> Path | None: ...
    def lpj_readings(self, release: str) -> list[int]: ...
    def is_root(self) -> bool: ...
    def has_root_disk(self) -> bool: ...


def _human(size: int) -> str:
    from lab.cli.cache_cmd import human_size

    return human_size(size)


# ------------------------------------------------------------------ checks
def check_packages(probe: Probe) -> Finding:
    """Every Debian package cnlab needs is installed."""
    missing = probe.missing_packages()
    if not missing:
        return Finding("packages", "ok", f"all {len(REQUIRED_PACKAGES)} Debian packages cnlab needs are installed")
    why = "; ".join(f"{name}: {REQUIRED_PACKAGES.get(name, '')}" for name in missing)
    return Finding("packages", "fail", f"missing {' '.join(missing)} ({why})",
                   f"sudo apt-get update && sudo {' '.join(install_command(missing))} "
                   "(python3 -m lab does it when run as root)")


def check_qemu(probe: Probe) -> Finding:
    """qemu-system-x86_64 is there, and which version."""
    version = probe.qemu_version()
    if version in ("missing", "unknown", ""):
        return Finding("QEMU", "fail", f"qemu-system-x86_64 {version or 'missing'}",
                       "sudo apt-get install qemu-system-x86")
    return Finding("QEMU", "ok", version)


def check_kvm(probe: Probe, accel: str = "auto") -> Finding:
    """KVM usable, or why not and what would fix it."""
    slower = "guests run under TCG (about 10x slower, timeouts scaled x3)"
    if accel == "tcg":
        return Finding("KVM", "info", "not used: --accel tcg")
    level = "fail" if accel == "kvm" else "warn"
    problem = probe.kvm_device_problem()
    if problem is not None:
        if "no /dev/kvm" in problem:
            fix = ("load the module: sudo modprobe kvm_intel (or kvm_amd)" if probe.cpu_has_virtualisation() else
                   "the CPU offers no VT-x/AMD-V (no vmx/svm flag): enable nested virtualisation for this VM, "
                   "or run on bare metal")
        else:
            fix = "add yourself to the kvm group: sudo adduser $USER kvm (then log in again)"
        return Finding("KVM", level, f"unusable: {problem}; {slower}", fix)
    verdict = probe.kvm_verdict()
    if verdict is None:
        return Finding("KVM", "info", "/dev/kvm opens; not test-booted yet for this host kernel and QEMU "
                                      "(the first cnlab command that boots a guest does it)")
    if verdict.get("kvm_works"):
        return Finding("KVM", "ok", str(verdict.get("reason", "KVM works")))
    fix = ("look for kvm errors in the host's dmesg" if probe.cpu_has_virtualisation() else
           "the CPU offers no VT-x/AMD-V (no vmx/svm flag): enable nested virtualisation for this VM, or run on "
           "bare metal")
    return Finding("KVM", level, f"unusable: {verdict.get('reason', 'test boot failed')}; {slower}",
                   f"{fix} (--accel tcg skips the test boot)")


def check_tcg_threads(probe: Probe, choice: str = "auto") -> Finding:
    """How TCG will thread guests here (a guest alone, and cnlab run's default pair)."""
    cores = probe.cpu_count()
    pair = tcg_threads_for(RUN_GUESTS, RUN_VCPUS, choice, cores)
    alone = tcg_threads_for(1, RUN_VCPUS, choice, cores)
    return Finding("TCG threads", "info",
                   f"--tcg-threads {choice}: a guest alone runs {alone}-threaded; cnlab run's {RUN_GUESTS} guests of "
                   f"{RUN_VCPUS} vCPUs on {cores} core(s) run {pair}-threaded")


def check_cores(probe: Probe) -> Finding:
    """Enough cores for guests in parallel."""
    cores = probe.cpu_count()
    if cores < 2:
        return Finding("cores", "warn", f"{cores} core: guests in parallel share it",
                       "give the machine 2 or more cores, or run with -n 1")
    return Finding("cores", "ok", f"{cores} usable by cnlab (cnlab run: {min(2, cores)} guests by default)")


def check_disk(probe: Probe) -> Finding:
    """Free disk where the cache lives."""
    free = probe.disk_free()
    summary = f"{_human(free)} free for the cache ({probe.cache})"
    fix = "free some space, run cnlab cache prune, or point --cache (or CNLAB_CACHE) at a bigger disk"
    if free < MIN_FREE:
        return Finding("disk", "fail", summary + f"; a cold build needs about {_human(MIN_FREE)}", fix)
    if free < LOW_FREE:
        return Finding("disk", "warn", summary, fix)
    return Finding("disk", "ok", summary)


def check_cache(probe: Probe) -> Finding:
    """How big the cache is."""
    total, artefacts = probe.cache_usage()
    summary = f"{_human(total)} in {artefacts} artefacts (cnlab cache lists them)"
    if total > BIG_CACHE:
        return Finding("cache", "warn", summary, "cnlab cache prune (keeps the last used of each kind)")
    return Finding("cache", "ok", summary)


def check_kernel(probe: Probe) -> tuple[Finding, str | None]:
    """The guest kernel resolves and its headers are installed (the module builds against them)."""
    try:
        release = probe.kernel_release()
    except LabError as exc:
        return Finding("kernel", "fail", str(exc).splitlines()[0], "sudo apt-get update"), None
    headers = probe.headers_dir(release)
    if headers is None:
        return Finding("kernel", "fail", f"{release}: no headers to build the module against",
                       f"sudo apt-get install linux-headers-{release}"), release
    return Finding("kernel", "ok", f"{release}, headers in {headers}"), release


def check_root(probe: Probe) -> Finding | None:
    """Building the root disk needs root (mkfs.ext4 -d keeps owners only then)."""
    if probe.is_root() or probe.has_root_disk():
        return None
    return Finding("root disk", "fail", "not built yet, and building it needs root",
                   "sudo python3 -m lab image build (once; later runs need no root)")


def check_calibration(probe: Probe, release: str | None, kvm: bool) -> Finding:
    """The delay-loop calibration TCG guests get (lab.guest.calibration)."""
    if kvm:
        return Finding("calibration", "info", "not used under KVM (the kernel calibrates itself)")
    if release is None:
        return Finding("calibration", "info", "unknown (no guest kernel)")
    readings = probe.lpj_readings(release)[:READINGS]
    if len(readings) >= READINGS:
        median = sorted(readings)[READINGS // 2]
        return Finding("calibration", "ok", f"{READINGS} readings for {release} on this host boot: TCG guests boot "
                                            f"with lpj={median}")
    return Finding("calibration", "info", f"{len(readings)} of {READINGS} readings for {release} on this host boot: "
                                          f"the next {READINGS - len(readings)} TCG guests calibrate themselves "
                                          "(about 0.15 s slower each)")


def run_checks(probe: Probe, tcg_threads: str = "auto", accel: str = "auto") -> list[Finding]:
    """Every check, in the order a person reads them."""
    findings = [check_packages(probe), check_qemu(probe)]
    kvm = check_kvm(probe, accel)
    findings += [kvm, check_tcg_threads(probe, tcg_threads), check_cores(probe), check_disk(probe),
                 check_cache(probe)]
    kernel, release = check_kernel(probe)
    findings.append(kernel)
    root = check_root(probe)
    if root is not None:
        findings.append(root)
    findings.append(check_calibration(probe, release, kvm.level == "ok"))
    return findings


def print_findings(findings: list[Finding], out: TextIO) -> int:
    """Print the report; 1 if any check failed, else 0."""
    width = max(len(f.check) for f in findings)
    for finding in findings:
        print(f"  {finding.level:5} {finding.check:{width}}  {finding.summary}", file=out)
        if finding.fix and finding.level in ("warn", "fail"):
            print(f"  {'':5} {'':{width}}  fix: {finding.fix}", file=out)
    problems = sum(f.level == "fail" for f in findings)
    warnings = sum(f.level == "warn" for f in findings)
    print(f"cnlab doctor: {problems} problem(s), {warnings} warning(s)", file=out)
    return 1 if problems else 0


# ------------------------------------------------------------- real host
class HostProbe:
    """The facts of this host, read without building or booting anything."""

    def __init__(self, cache: Path, custom_kernel: Path | None = None, binary: str = "qemu-system-x86_64") -> None:
        self.cache = cache
        self.custom_kernel = custom_kernel
        self.binary = binary

    def missing_packages(self) -> list[str]:
        """The required Debian packages dpkg does not report installed."""
        return missing_packages()

    def qemu_version(self) -> str:
        """``qemu-system-x86_64 --version``'s first line, or ``missing``."""
        return qemu_version(self.binary)

    def kvm_device_problem(self) -> str | None:
        """Why /dev/kvm cannot be opened, or None."""
        if not os.path.exists("/dev/kvm"):
            return "no /dev/kvm"
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "/dev/kvm not readable and writable by this user"
        return None

    def cpu_has_virtualisation(self) -> bool:
        """True if /proc/cpuinfo shows vmx or svm."""
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return any(word in ("vmx", "svm") for line in flags.splitlines() if line.startswith("flags")
                   for word in line.split())

    def kvm_verdict(self) -> dict | None:
        """The cached KVM test boot for this host kernel and QEMU (``CACHE/accel.json``), or None."""
        try:
            stored = json.loads((self.cache / "accel.json").read_text())
        except (OSError, ValueError):
            return None
        key = {"host_kernel": os.uname().release, "qemu": self.qemu_version()}
        return stored if isinstance(stored, dict) and stored.get("key") == key else None

    def cpu_count(self) -> int:
        """Cores this process may run on."""
        return len(os.sched_getaffinity(0))

    def disk_free(self) -> int:
        """Free bytes on the file system the cache is (or would be) on."""
        path = self.cache
        while not path.exists() and path != path.parent:
            path = path.parent
        return shutil.disk_usage(path).free

    def cache_usage(self) -> tuple[int, int]:
        """(bytes on disk, artefacts) of the cache."""
        inventory = take_inventory(self.cache)
        return inventory.total_bytes, len(inventory.artefacts)

    def kernel_release(self) -> str:
        """The guest kernel's release (Debian's cloud kernel via apt-cache, or --kernel's)."""
        if self.custom_kernel is not None:
            from lab.image.kernel import custom_kernel

            return custom_kernel(self.custom_kernel, None).release
        from lab.image.kernel import resolve_cached

        package, _ = resolve_cached(self.cache)
        return package.removeprefix("linux-image-")

    def headers_dir(self, release: str) -> Path | None:
        """``/usr/src/linux-headers-RELEASE`` if it is a build tree."""
        path = Path("/usr/src") / f"linux-headers-{release}"
        return path if (path / "Makefile").exists() else None

    def lpj_readings(self, release: str) -> list[int]:
        """The delay-loop readings kept for ``release`` on this host boot."""
        try:
            values = json.loads(lpj_file(self.cache, release).read_text()).get("readings", [])
        except (OSError, ValueError, AttributeError):
            return []
        return [v for v in values if isinstance(v, int) and v > 0] if isinstance(values, list) else []

    def is_root(self) -> bool:
        """True when running as root."""
        return os.geteuid() == 0

    def has_root_disk(self) -> bool:
        """True if the cache holds a built root disk."""
        return any((folder / "rootfs.ext4").is_file() for folder in (self.cache / "rootfs").glob("*"))
