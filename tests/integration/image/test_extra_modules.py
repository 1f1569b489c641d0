"""Extra modules on real kernel headers and a real guest: built against cnlab.ko's Module.symvers, a build error
stops ``cnlab exec`` before any boot, loaded after cnlab.ko in dependency order, calling the CBUS API, unloaded
and loaded again as the module-reload fault does (parameters kept), and their WARN seen by the console scanner."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.guest.console_scan import scan_console
from lab.guest.files import install_guest_programs
from lab.guest.labsetup import Lab
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[3]
CNBEAT = ROOT / "examples" / "cnlab-cnbeat" / "src" / "cnlab_cnbeat" / "kmod"

BASE_C = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include <cbus.h>

/* Sends one connector message through CBUS to group 30; other modules call it. */
int zzbase_send(u32 seq)
{
\tu8 buf[sizeof(struct cn_msg) + 8] __aligned(8) = {};
\tstruct cn_msg *msg = (struct cn_msg *)buf;

\tmsg->id.idx = 0x2e;
\tmsg->id.val = 1;
\tmsg->seq = seq;
\tmsg->len = 8;
\treturn cbus_insert_group(msg, 30, 0, GFP_KERNEL);
}
EXPORT_SYMBOL_GPL(zzbase_send);

static int __init zzbase_init(void)
{
\treturn 0;
}

static void __exit zzbase_exit(void)
{
}

module_init(zzbase_init);
module_exit(zzbase_exit);
MODULE_LICENSE("GPL");
"""

USER_C = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>

int zzbase_send(u32 seq);

static int __init aauser_init(void)
{
\tu32 i;

\tfor (i = 0; i < 5; i++)
\t\tif (zzbase_send(i))
\t\t\treturn -EIO;
\treturn 0;
}

static void __exit aauser_exit(void)
{
}

module_init(aauser_init);
module_exit(aauser_exit);
MODULE_LICENSE("GPL");
"""


def _module(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "Kbuild").write_text(f"obj-m := {name}.o\n")
    (folder / f"{name}.c").write_text(text)
    return folder


def _cnlab(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "lab", *argv], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd)


def test_a_module_that_does_not_build_stops_cnlab_exec_before_any_boot(tmp_path):
    broken = _module(tmp_path, "broken", USER_C.replace("zzbase_send(i)", "cbus_insrt(i)"))
    started = time.monotonic()
    proc = _cnlab("exec", "--module", str(broken), "--", "true", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cnlab: error: module {broken}: build failed: {broken}/broken.c:")
    assert "error: implicit declaration of function 'cbus_insrt'" in last.replace("‘", "'").replace("’", "'")
    assert "guest under" not in proc.stderr  # nothing booted
    # modpost's error: a symbol nobody exports (no folder before it provides zzbase_send)
    user = _module(tmp_path, "aauser", USER_C)
    proc = _cnlab("exec", "--module", str(user), "--", "true", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f'cnlab: error: module {user}: build failed: ERROR: modpost: "zzbase_send" [')
    print(f"two failed builds and their messages in {time.monotonic() - started:.1f} s")


def test_extra_modules_load_after_cnlab_in_order_call_cbus_reload_and_warn(cnlab_lab, tmp_path, request):
    base = _module(tmp_path, "zzbase", BASE_C)
    user = _module(tmp_path, "aauser", USER_C)
    lab = Lab(dataclasses.replace(cnlab_lab.options, extra_modules=(base, user, CNBEAT)))
    started = time.monotonic()
    modules = lab.extra_modules
    print(f"three extra modules built or found in {time.monotonic() - started:.1f} s")
    assert [m.name for m in modules] == ["zzbase", "cnbeat", "aauser"]  # aauser waits for zzbase
    assert modules[2].depends == ("zzbase",) and modules[1].depends == ("cnlab",)
    spec = lab.guest_spec(GuestShape(cpus=2), name="extra")
    with Guest(spec, log_dir=tmp_path / "logs") as guest:
        lib = install_guest_programs(guest)
        loaded = [line.split()[0] for line in guest.run(["cat", "/proc/modules"], check=True).text.splitlines()]
        assert loaded[:4] == ["aauser", "cnbeat", "zzbase", "cnlab"]  # newest first
        stats = guest.run(["cnlabctl", "stats", "--json"], check=True).text
        assert '"inserted": 5' in stats  # aauser's init sent 5 messages through zzbase and CBUS

        guest.run(["sh", "-c", "echo 100 > /sys/module/cnbeat/parameters/rate"], check=True)
        first = guest.run(["cat", "/sys/module/cnbeat/parameters/instance"], check=True).text.strip()
        # what the module-reload fault runs
        guest.run(["python3", "-S", f"{lib}/labmods.py", "unload"], check=True)
        assert "cnlab" not in guest.run(["cat", "/proc/modules"], check=True).text
        guest.run(["python3", "-S", f"{lib}/labmods.py", "load"], check=True)
        loaded = [line.split()[0] for line in guest.run(["cat", "/proc/modules"], check=True).text.splitlines()]
        assert loaded[:4] == ["aauser", "cnbeat", "zzbase", "cnlab"]
        assert guest.run(["cat", "/sys/module/cnbeat/parameters/rate"], check=True).text.strip() == "100"
        assert guest.run(["cat", "/sys/module/cnbeat/parameters/instance"], check=True).text.strip() != first
        log = guest.run(["dmesg"], check=True).text
        assert f"cnbeat: instance {int(first):08x} final: inserted " in log

        guest.run(["sh", "-c", "echo 1 > /sys/module/cnbeat/parameters/warn"], check=True)
        deadline = time.monotonic() + 30
        reports = []
        while time.monotonic() < deadline and not reports:  # the console file is written by QEMU as it comes
            reports = [r for r in scan_console(guest.console_text()) if r.kind == "warning"]
            if not reports:
                guest.run(["true"])
        (report,) = reports
        assert "cnbeat" in report.excerpt and "cnbeat_set_warn" in report.frames, report.frames
