"""QEMU command-line and kernel command-line builders."""

from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.guest.accel import Accel
from lab.guest.qemu_argv import BootPaths, GuestShape, SavedState, kernel_cmdline, qemu_argv

TCG = Accel("tcg", "test")
KVM = Accel("kvm", "test")


def _paths(tmp_path: Path, modules: bool = True) -> BootPaths:
    return BootPaths(
        kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd", rootfs=tmp_path / "root.ext4",
        modules_disk=tmp_path / "mods.ext4" if modules else None, console_log=tmp_path / "console.log",
        qmp_socket=tmp_path / "qmp.sock", ready_socket=tmp_path / "ready.sock",
    )


@pytest.mark.parametrize("cpus", [0, -1, 9, 100])
def test_cpus_out_of_range_is_a_usage_error(cpus):
    with pytest.raises(UsageError, match="--cpus must be between 1 and 8"):
        GuestShape(cpus=cpus)


def test_memory_out_of_range_is_a_usage_error():
    with pytest.raises(UsageError, match="--mem"):
        GuestShape(memory_mb=16)


def test_argv_is_a_list_with_the_safety_flags(tmp_path):
    argv = qemu_argv("qemu-system-x86_64", GuestShape(cpus=4, memory_mb=512), TCG, _paths(tmp_path), "x")
    assert all(isinstance(a, str) for a in argv)
    assert argv[argv.index("-smp") + 1] == "4" and argv[argv.index("-m") + 1] == "512"
    assert "-no-reboot" in argv and argv[-1] == "-S"
    assert "tcg,thread=multi,tb-size=256" in argv


def test_kvm_uses_the_host_cpu(tmp_path):
    argv = qemu_argv("q", GuestShape(), KVM, _paths(tmp_path), "x")
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host"


def test_no_tcp_ports_on_the_command_line(tmp_path):
    # The SSH forward is added over QMP with collision retry; nothing fixed here.
    joined = " ".join(qemu_argv("q", GuestShape(), TCG, _paths(tmp_path), "x"))
    assert "hostfwd" not in joined and "tcp:" not in joined


def test_console_goes_to_a_file_and_the_root_disk_is_a_snapshot(tmp_path):
    argv = qemu_argv("q", GuestShape(), TCG, _paths(tmp_path), "x")
    assert f"file,id=console,path={tmp_path / 'console.log'}" in argv
    assert any("snapshot=on" in a for a in argv)
    assert any("readonly=on" in a for a in argv)


def test_module_disk_is_optional(tmp_path):
    argv = qemu_argv("q", GuestShape(), TCG, _paths(tmp_path, modules=False), "x")
    assert not any("id=mods" in a for a in argv)


def test_paused_can_be_turned_off(tmp_path):
    assert "-S" not in qemu_argv("q", GuestShape(), TCG, _paths(tmp_path), "x", paused=False)


def test_kernel_cmdline_panics_fast_and_keeps_warnings():
    line = kernel_cmdline(["slub_debug=FZPU"]).split()
    assert "panic=-1" in line and "loglevel=5" in line and line[-1] == "slub_debug=FZPU"


@pytest.mark.parametrize("bad", ["a b", "x;reboot", "$(id)", "quote'", ""])
def test_kernel_cmdline_rejects_unsafe_tokens(bad):
    with pytest.raises(UsageError, match="not allowed"):
        kernel_cmdline([bad])


def test_timeouts_scale_with_the_accelerator():
    assert KVM.timeout_scale == 1 and TCG.timeout_scale == 3 and TCG.slowdown == 10


def test_a_guest_whose_state_is_saved_has_its_ram_in_a_shared_file_and_virtio_disks(tmp_path):
    saved = SavedState(tmp_path / "ram", share=True)
    argv = qemu_argv("q", GuestShape(memory_mb=512), TCG, _paths(tmp_path), "x", saved=saved)
    assert argv[argv.index("-machine") + 1].endswith(",memory-backend=cnlab-ram")
    assert f"memory-backend-file,id=cnlab-ram,size=512M,mem-path={tmp_path / 'ram'},share=on" in argv
    assert "virtio-blk-pci,drive=root,serial=cnlab-root" in argv and not any("nvme" in a for a in argv)
    assert "-incoming" not in argv


def test_a_restored_guest_maps_the_ram_copy_on_write_waits_for_its_state_and_appends_to_its_console(tmp_path):
    saved = SavedState(tmp_path / "a,b" / "ram", share=False, incoming=True)
    argv = qemu_argv("q", GuestShape(), TCG, _paths(tmp_path), "x", saved=saved)
    assert f"mem-path={tmp_path / 'a,,b' / 'ram'},share=off" in argv[argv.index("-object") + 1]  # comma escaped
    assert argv[argv.index("-incoming") + 1] == "defer" and argv[-1] == "-S"
    assert f"file,id=console,path={tmp_path / 'console.log'},append=on" in argv


def test_a_cold_boot_keeps_nvme_and_no_memory_backend(tmp_path):
    argv = qemu_argv("q", GuestShape(), TCG, _paths(tmp_path), "x")
    assert "nvme,drive=root,serial=cnlab-root" in argv and "-object" not in argv
    assert argv[argv.index("-machine") + 1] == "q35,vmport=off,smbus=off,sata=off"
