"""cnlab doctor: each check against a fake host, and the real host read without building anything."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab.cli import doctor
from lab.cli.main import main
from lab.errors import HostSetupError

GiB = 1 << 30


@dataclass
class FakeHost:
    """Every fact the checks read, healthy by default."""

    cache: Path = Path("/cache")
    missing: list = field(default_factory=list)
    qemu: str = "QEMU emulator version 7.2.22"
    device_problem: str | None = None
    virtualisation: bool = True
    verdict: dict | None = field(default_factory=lambda: {"kvm_works": True, "reason": "KVM works (0.8 s)"})
    cores: int = 2
    free: int = 50 * GiB
    usage: tuple = (400 << 20, 6)
    release: str | Exception = "6.1.0-57-cloud-amd64"
    headers: bool = True
    readings: list = field(default_factory=lambda: [7973224, 7971808, 7971868])
    root: bool = True
    root_disk: bool = True

    def missing_packages(self):
        return self.missing

    def qemu_version(self):
        return self.qemu

    def kvm_device_problem(self):
        return self.device_problem

    def cpu_has_virtualisation(self):
        return self.virtualisation

    def kvm_verdict(self):
        return self.verdict

    def cpu_count(self):
        return self.cores

    def disk_free(self):
        return self.free

    def cache_usage(self):
        return self.usage

    def kernel_release(self):
        if isinstance(self.release, Exception):
            raise self.release
        return self.release

    def headers_dir(self, release):
        return Path(f"/usr/src/linux-headers-{release}") if self.headers else None

    def lpj_readings(self, release):
        return self.readings

    def is_root(self):
        return self.root

    def has_root_disk(self):
        return self.root_disk


def _by_check(host, **kwargs):
    return {f.check: f for f in doctor.run_checks(host, **kwargs)}


def test_a_healthy_host_passes(capsys):
    import io

    out = io.StringIO()
    findings = doctor.run_checks(FakeHost())
    assert doctor.print_findings(findings, out) == 0
    assert all(f.level in ("ok", "info") for f in findings)
    assert "0 problem(s), 0 warning(s)" in out.getvalue()
    assert _by_check(FakeHost())["calibration"].summary.startswith("not used under KVM")
    assert _by_check(FakeHost(), accel="tcg")["calibration"].summary.endswith("lpj=7971868")


def test_missing_packages_fail_with_the_apt_command():
    finding = _by_check(FakeHost(missing=["mmdebstrap", "lz4"]))["packages"]
    assert finding.level == "fail" and "mmdebstrap lz4" in finding.summary
    assert "apt-get install -y --no-install-recommends mmdebstrap lz4" in finding.fix


def test_missing_qemu_fails():
    assert _by_check(FakeHost(qemu="missing"))["QEMU"].fix == "sudo apt-get install qemu-system-x86"


@pytest.mark.parametrize(("host", "fix"), [
    (FakeHost(device_problem="no /dev/kvm", virtualisation=True, verdict=None), "modprobe kvm_intel"),
    (FakeHost(device_problem="no /dev/kvm", virtualisation=False, verdict=None), "enable nested virtualisation"),
    (FakeHost(device_problem="/dev/kvm not readable and writable by this user"), "adduser $USER kvm"),
    (FakeHost(verdict={"kvm_works": False, "reason": "KVM test boot failed (QEMU status -6)"},
              virtualisation=False), "no vmx/svm flag"),
])
def test_kvm_unusable_is_a_warning_with_the_reason_and_a_fix(host, fix):
    finding = _by_check(host)["KVM"]
    assert finding.level == "warn" and "TCG" in finding.summary and fix in finding.fix


def test_kvm_demanded_but_unusable_fails_and_tcg_requested_is_fine():
    host = FakeHost(device_problem="no /dev/kvm")
    assert _by_check(host, accel="kvm")["KVM"].level == "fail"
    assert _by_check(host, accel="tcg")["KVM"].level == "info"
    assert _by_check(FakeHost(verdict=None))["KVM"].level == "info"


def test_the_tcg_threading_follows_cores_and_choice():
    assert "run single-threaded" in _by_check(FakeHost(cores=2))["TCG threads"].summary
    assert "run multi-threaded" in _by_check(FakeHost(cores=8))["TCG threads"].summary
    assert "run multi-threaded" in _by_check(FakeHost(cores=2), tcg_threads="multi")["TCG threads"].summary


def test_low_disk_fails_and_a_big_cache_warns():
    assert _by_check(FakeHost(free=GiB // 2))["disk"].level == "fail"
    assert _by_check(FakeHost(free=2 * GiB))["disk"].level == "warn"
    cache = _by_check(FakeHost(usage=(9 * GiB, 40)))["cache"]
    assert cache.level == "warn" and "cnlab cache prune" in cache.fix
    assert _by_check(FakeHost(cores=1))["cores"].level == "warn"


def test_kernel_headers_and_apt_lists():
    finding = _by_check(FakeHost(headers=False))["kernel"]
    assert finding.level == "fail" and finding.fix == "sudo apt-get install linux-headers-6.1.0-57-cloud-amd64"
    no_lists = _by_check(FakeHost(release=HostSetupError("cannot resolve linux-image-cloud-amd64: run 'apt-get "
                                                         "update' first")), accel="tcg")
    assert no_lists["kernel"].level == "fail" and no_lists["calibration"].summary.startswith("unknown")


def test_no_root_and_no_root_disk_fails():
    assert "root disk" not in _by_check(FakeHost(root=False, root_disk=True))
    assert _by_check(FakeHost(root=False, root_disk=False))["root disk"].fix.startswith("sudo python3 -m lab")


def test_calibration_in_progress():
    assert "the next 2 TCG guests" in _by_check(FakeHost(readings=[1], verdict={"kvm_works": False}))[
        "calibration"].summary


def test_a_problem_means_exit_1_with_the_fix(capsys):
    import io

    out = io.StringIO()
    assert doctor.print_findings(doctor.run_checks(FakeHost(missing=["lz4"])), out) == 1
    assert "fix: sudo apt-get update && sudo apt-get install" in out.getvalue()
    assert "1 problem(s)" in out.getvalue()


def test_the_real_probe_reads_this_host_without_building(tmp_path):
    probe = doctor.HostProbe(tmp_path / "cache")
    assert probe.cpu_count() >= 1 and probe.disk_free() > 0
    assert probe.cache_usage() == (0, 0) and probe.kvm_verdict() is None
    assert probe.lpj_readings("6.1.0-57-cloud-amd64") == [] and not probe.has_root_disk()
    assert not (tmp_path / "cache").exists()


def test_cnlab_doctor_exit_status_follows_the_findings(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(doctor, "HostProbe", lambda cache, custom_kernel=None: FakeHost(cache=cache, missing=["lz4"]))
    assert main(["--cache", str(tmp_path), "doctor"]) == 1
    assert "fix: " in capsys.readouterr().out
