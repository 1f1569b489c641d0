"""The default job until scenarios exist: boot, load the module, echo through it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lab.guest.files import install_guest_programs
from lab.guest.labsetup import Lab
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape

__all__ = ["run_smoke"]


def run_smoke(lab: Lab, json_path: Path | None = None, echoes: int = 200) -> int:
    """Boot a 2-vCPU guest with the module loaded and check the connector round trip."""
    spec = lab.guest_spec(GuestShape(cpus=2), name="smoke")
    print(f"cnlab: kernel {spec.image.kernel.release}, accelerator {spec.accel.name} ({spec.accel.reason})")
    with Guest(spec) as guest:
        lib = install_guest_programs(guest)
        result = guest.run(["python3", f"{lib}/smoke_echo.py", str(echoes)], timeout=120)
        lsmod = guest.run(["grep", "-w", "cnlab", "/proc/modules"])
        connector = guest.run(["cat", "/proc/net/connector"])
    report = {
        "kernel": spec.image.kernel.release,
        "accel": spec.accel.name,
        "cpus": guest.ready_info.get("cpus"),
        "boot_seconds": {"ready": round(guest.timing.ready, 3), "ssh": round(guest.timing.ssh, 3)},
        "module_loaded": lsmod.ok,
        "connector_ids": connector.text.strip().splitlines()[1:],
        "echo": json.loads(result.text) if result.ok else {"error": result.stderr.decode(errors="replace")},
    }
    passed = result.ok and lsmod.ok
    print(f"boot      ready {report['boot_seconds']['ready']:.2f} s, SSH {report['boot_seconds']['ssh']:.2f} s "
          f"({report['cpus']} vCPUs)")
    print(f"module    cnlab {'loaded' if lsmod.ok else 'NOT loaded'}; connector ids: "
          f"{', '.join(report['connector_ids']) or '-'}")
    echo = report["echo"]
    if result.ok:
        print(f"echo      {echo['intact']}/{echo['echoes']} intact, median RTT {echo['rtt_us_median']:.0f} us")
    else:
        print(f"echo      FAILED: {echo['error'].strip()[:200]}")
    print(f"result    {'PASS' if passed else 'FAIL'}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.flush()
    return 0 if passed else 1
