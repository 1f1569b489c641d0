"""kmemleak records read after a scenario on the debug flavour: the lab module's leaks, nothing else."""

from __future__ import annotations

from types import SimpleNamespace

from lab.command import CommandResult
from lab.guest.kmemleak import lab_modules, parse_kmemleak, scan_leaks

# The format of /sys/kernel/debug/kmemleak (mm/kmemleak.c, print_unreferenced) in 6.1.
RECORDS = """\
unreferenced object 0xffff888004f1e000 (size 1024):
  comm "insmod", pid 245, jiffies 4294893420 (age 52.350s)
  hex dump (first 32 bytes):
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
  backtrace:
    [<ffffffff8134b0e4>] kmalloc_trace+0x24/0x90
    [<ffffffffc0250123>] cnlab_ctl_init+0x23/0x1a0 [cnlab]
    [<ffffffff81002c4e>] do_one_initcall+0x5e/0x330
unreferenced object 0xffff888006a2b800 (size 64):
  comm "swapper/0", pid 1, jiffies 4294892000 (age 60.120s)
  hex dump (first 32 bytes):
    6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b  kkkkkkkkkkkkkkkk
  backtrace:
    [<ffffffff8134b0e4>] kmalloc_trace+0x24/0x90
    [<ffffffff81a3c2d1>] acpi_os_map_iomem+0x91/0x200
"""


def test_only_records_with_a_frame_in_a_lab_module_are_reports():
    reports = parse_kmemleak(RECORDS)
    assert len(reports) == 1
    leak = reports[0]
    assert leak["kind"] == "kmemleak"
    assert leak["title"] == "unreferenced object 0xffff888004f1e000 (size 1024):"
    assert leak["frames"] == ["kmalloc_trace", "cnlab_ctl_init", "do_one_initcall"]
    assert "comm \"insmod\"" in leak["excerpt"]
    assert parse_kmemleak(RECORDS, ("other_module",)) == []


def test_a_leak_of_a_module_unloaded_since_is_kept_by_its_unnamed_frame():
    # kmemleak names frames when its file is read: after an unload, the module's frames are bare addresses
    unloaded = RECORDS.replace("[<ffffffffc0250123>] cnlab_ctl_init+0x23/0x1a0 [cnlab]",
                               "[<000000001e5028a2>] 0xffffffffc0250123")
    (leak,) = parse_kmemleak(unloaded)
    assert leak["frames"] == ["kmalloc_trace", "0xffffffffc0250123", "do_one_initcall"]
    # an unnamed address outside the module area is not a module's
    assert parse_kmemleak(unloaded.replace("0xffffffffc0250123", "0xffffffff81250123")) == []


#: Read from a real debug-flavour guest (tests/integration/kmod/test_debug_kernel.py, CBUS events not freed after
#: their send): the frame addresses in brackets are hashed (%p); 23 objects from one place.
REAL = """\
unreferenced object 0xff11000005982680 (size 96):
  comm "cnlab_g0/0", pid 110, jiffies 4294909510
  hex dump (first 32 bytes):
    80 22 98 05 00 00 11 ff 02 00 00 00 00 00 00 00  ."..............
    20 00 00 00 01 00 00 00 44 07 00 00 00 00 00 00   .......D.......
  backtrace:
    [<00000000aa2e8248>] __kmalloc+0x4d/0x160
    [<000000001e5028a2>] cbus_insert_group+0xfd5/0x1c90 [cnlab]
    [<000000001dcb0e23>] gen_emit+0x50e/0x830 [cnlab]
    [<0000000006a758c4>] gen_kthread_fn+0x689/0x940 [cnlab]
    [<0000000079ca5b00>] kthread+0x296/0x340
    [<00000000cc06aea2>] ret_from_fork+0x22/0x30
"""


def test_many_objects_leaked_from_one_place_are_one_report_with_a_count():
    other = REAL.replace("0xff11000005982680", "0xff11000005982280").replace("(size 96)", "(size 128)")
    (leak,) = parse_kmemleak(REAL + other + REAL.replace("0xff11000005982680", "0xff11000005982300"))
    assert leak["count"] == 3 and leak["title"].endswith("and 2 more from the same place")
    assert leak["frames"][:3] == ["__kmalloc", "cbus_insert_group", "gen_emit"]


def test_the_same_leak_at_another_address_has_the_same_fingerprint():
    moved = RECORDS.replace("0xffff888004f1e000", "0xffff888009990000").replace("(age 52.350s)", "(age 9.1s)")
    assert parse_kmemleak(RECORDS)[0]["fingerprint"] == parse_kmemleak(moved)[0]["fingerprint"]


class _Guest:
    def __init__(self, status: int, stdout: str = "", modules=()):
        self.status, self.stdout, self.commands = status, stdout, []
        self.spec = SimpleNamespace(modules=modules)

    def run(self, argv, timeout=None, check=False):
        self.commands.append(argv)
        return CommandResult(argv, self.status, self.stdout.encode(), b"kmemleak: write error\n")


def test_scan_asks_for_two_scans_then_reads_and_clears():
    from pathlib import Path

    guest = _Guest(0, RECORDS, (Path("/lib/cnlab/cnlab.ko"), Path("/lib/cnlab/cnlab_ext.ko")))
    assert lab_modules(guest) == ("cnlab", "cnlab_ext")
    assert [r["frames"][1] for r in scan_leaks(guest)] == ["cnlab_ctl_init"]
    script = guest.commands[0][2]
    assert script.count("echo scan") == 2 and script.index("cat ") < script.index("echo clear")


def test_a_kernel_without_kmemleak_and_a_failed_scan_give_no_report():
    assert scan_leaks(_Guest(3)) == []  # the cloud kernel: no /sys/kernel/debug/kmemleak
    assert scan_leaks(_Guest(1)) == []  # kmemleak switched itself off: logged, no verdict


def test_a_kernel_configured_without_kmemleak_is_not_asked(tmp_path):
    from lab.image.kernel import KernelSpec

    def guest_of(config: str | None) -> _Guest:
        path = None
        if config is not None:
            path = tmp_path / "config"
            path.write_text(config)
        kernel = KernelSpec(image=tmp_path / "bz", release="6.1", modules_dir=None, kbuild_dir=None, config=path)
        guest = _Guest(0, RECORDS)
        guest.spec.image = SimpleNamespace(kernel=kernel)
        return guest

    cloud = guest_of("# CONFIG_DEBUG_KMEMLEAK is not set\n")
    assert scan_leaks(cloud) == [] and cloud.commands == []  # the cloud kernel: nothing sent
    for unknown_or_debug in (guest_of(None), guest_of("CONFIG_DEBUG_KMEMLEAK=y\n")):
        assert len(scan_leaks(unknown_or_debug)) == 1 and len(unknown_or_debug.commands) == 1
