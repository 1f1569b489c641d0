"""Foundation tier: real QEMU guests, the real module, the real connector.

Marked ``lab``: run with ``pytest -m lab`` (tox -e lab).  They use the
``cnlab_*`` fixtures of lab.pytest_plugin, so the image is built once per
run under a file lock, whatever the number of xdist workers.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab.errors import BootError
from lab.guest.files import install_guest_programs
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_guest_boots_with_n_cpus_module_loaded_and_echo_round_trip(cnlab_guest_factory, cpus):
    guest = cnlab_guest_factory(cpus=cpus)
    assert guest.ready_info["cpus"] == cpus
    assert guest.run(["nproc"], check=True).text.strip() == str(cpus)
    assert guest.run(["grep", "-w", "^cnlab", "/proc/modules"]).ok
    assert "16:1" in guest.run(["cat", "/proc/net/connector"], check=True).text
    lib = install_guest_programs(guest)
    echo = json.loads(guest.run(["python3", f"{lib}/smoke_echo.py", "50"], timeout=60, check=True).text)
    assert echo["intact"] == echo["echoes"] == 50
    # Debian's cloud kernel boots as a PVH ELF (lab.image.pvh), not through its bzImage decompressor
    assert guest.spec.image.manifest()["boot"] == "pvh"
    assert "qemu-system-x86_64" in guest.argv()[0] and str(guest.spec.image.pvh_kernel) in guest.argv()


def test_guest_has_the_tools_scenarios_need(cnlab_guest_factory):
    guest = cnlab_guest_factory(cpus=1, module=False)
    version = guest.run(["python3", "-c", "import pyroute2, pyroute2.netlink.connector; print(pyroute2.__version__)"],
                        check=True).text.strip()
    import pyroute2

    assert version == pyroute2.__version__
    assert guest.run(["modprobe", "sch_netem"]).ok  # module disk mounted, depmod done
    assert not guest.run(["grep", "-w", "^cnlab", "/proc/modules"]).ok


def test_sftp_put_get_and_large_output(cnlab_guest_factory, tmp_path):
    guest = cnlab_guest_factory(cpus=2, module=False)
    payload = os.urandom(300_000)
    (tmp_path / "in.bin").write_bytes(payload)
    guest.ssh.put(tmp_path / "in.bin", "/tmp/in.bin")
    guest.ssh.get("/tmp/in.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == payload
    result = guest.run(["sh", "-c", "head -c 2000000 /dev/zero; head -c 500000 /dev/zero >&2"], timeout=120)
    assert len(result.stdout) == 2_000_000 and len(result.stderr) == 500_000


def test_qmp_pause_and_resume(cnlab_guest_factory):
    guest = cnlab_guest_factory(cpus=1, module=False)
    guest.pause()
    assert guest.status() == "paused"
    guest.resume()
    assert guest.status() == "running"
    assert guest.run(["true"], timeout=30).ok


def test_the_init_reports_the_same_taint_mask_as_the_kernel_and_sees_it_change(cnlab_guest_factory):
    guest = cnlab_guest_factory(cpus=1)

    def over_ssh() -> int:
        return int(guest.run(["cat", "/proc/sys/kernel/tainted"], check=True).text)

    before = guest.tainted()
    assert before == over_ssh() and before & 1 << 12  # the lab module is out of tree: O
    # writing a mask adds its bits (root may); bit 9 is W, what a kernel warning sets
    guest.run(["sh", "-c", "echo 512 > /proc/sys/kernel/tainted"], check=True)
    assert guest.tainted() == over_ssh() == before | 512


def test_panicking_kernel_is_reported_with_the_console(cnlab_guest_factory):
    # No init in the initramfs: the kernel panics ("No working init found").
    with pytest.raises(BootError) as info:
        cnlab_guest_factory(cpus=1, module=False, cmdline=("rdinit=/nonexistent", "init=/nonexistent"))
    assert "QEMU exited" in str(info.value)
    assert "Kernel panic" in info.value.console_tail


ORPHAN_SCRIPT = textwrap.dedent("""
    import sys
    from lab.guest.machine import Guest
    from lab.guest.labsetup import Lab
    from lab.guest.qemu_argv import GuestShape
    guest = Guest(Lab().guest_spec(GuestShape(cpus=1), name="orphan", with_module=False))
    guest.start()
    print(guest._proc.pid, flush=True)
    sys.stdin.read()
""")


def test_sigkill_of_the_orchestrator_leaves_no_qemu(cnlab_lab):
    # "with": whatever fails, the orchestrator is reaped and its pipes closed
    # here, not left for a later test's garbage collection to complain about.
    with subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          env=dict(os.environ, CNLAB_CACHE=str(cnlab_lab.cache))) as orchestrator:
        line = orchestrator.stdout.readline()
        assert line.strip().isdigit(), "the orchestrator's guest did not boot (its error is in the captured stderr)"
        qemu_pid = int(line)
        pidfd = os.pidfd_open(qemu_pid)
        try:
            os.kill(orchestrator.pid, signal.SIGKILL)
            orchestrator.wait()
            readable, _, _ = select.select([pidfd], [], [], 30)
            assert readable, f"QEMU {qemu_pid} still alive 30 s after its orchestrator was killed"
        finally:
            os.close(pidfd)


def test_an_sshd_that_dies_before_listening_is_started_again(cnlab_guest_factory):
    """The init reports how sshd ended and starts it again (cnlab.sshd_fail=N: the first N starts fail)."""
    guest = cnlab_guest_factory(cpus=1, module=False, cmdline=("cnlab.sshd_fail=2",))
    assert guest.run(["true"], timeout=30).ok
    console = guest.console_text()
    for start in (1, 2):
        assert f"sshd exited before listening (exit status 127, start {start} of 3)" in console
    assert "start 3 of 3" not in console


def test_an_sshd_that_never_listens_ends_the_boot_with_the_reason(cnlab_guest_factory):
    with pytest.raises(BootError) as info:
        cnlab_guest_factory(cpus=1, module=False, cmdline=("cnlab.sshd_fail=3",))
    tail = info.value.console_tail
    assert "exec /nonexistent/sshd: No such file or directory" in tail
    assert "sshd exited before listening (exit status 127, start 3 of 3)" in tail
    assert "FATAL: sshd exited before listening" in tail


@pytest.mark.parametrize("index", range(4))
def test_parallel_guests_do_not_collide(cnlab_guest_factory, index):
    """Run under xdist (tox: a worker per host CPU): workers boot at once; ports and sockets must not clash.
    The heavy test below boots eight at once in one process."""
    guest = cnlab_guest_factory(cpus=1, module=False, name=f"par{index}")
    assert guest.run(["hostname"], check=True).text.strip() == "cnlab"


@pytest.mark.heavy
def test_eight_guests_started_at_once_get_distinct_ports_and_sockets(cnlab_lab):
    """Eight guests in one process, all booting at the same moment: every one
    comes up with its own forwarded port and its own socket folder."""
    specs = [cnlab_lab.guest_spec(GuestShape(cpus=1, memory_mb=256), name=f"oct{i}", with_module=False)
             for i in range(8)]
    guests = [Guest(spec) for spec in specs]
    try:
        with ThreadPoolExecutor(max_workers=len(guests)) as pool:
            list(pool.map(Guest.start, guests))
        # the nonce of each guest's boot or restore (a restored guest shares its boot_id with the others)
        answers = [guest.run(["cat", "/run/cnlab/nonce"], check=True).text.strip() for guest in guests]
    finally:
        for guest in guests:
            guest.stop()
    assert len({guest.ssh_port for guest in guests}) == 8
    assert len({guest.workdir for guest in guests}) == 8
    assert answers == [guest._nonce for guest in guests], "a connection reached another guest"
