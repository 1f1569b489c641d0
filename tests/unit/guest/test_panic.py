"""The panic watcher (lab.guest.panic) against a stand-in for QEMU's side of the monitor.

The stand-in connects to the watcher's socket as QEMU does (``-chardev socket,path=...`` without
``server=on``), greets, announces GUEST_PANICKED and answers the watcher's commands; it writes the
"dump" itself, as QEMU would.  A real guest's panic and dump: tests/integration/engine/test_diagnosis.py.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from lab.guest.panic import PanicWatcher, panic_args, read_sidecar, vmcore_sidecar

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}


class FakeQemuMonitor(threading.Thread):
    """QEMU's end of the watcher's monitor: panics, then answers until ``quit``."""

    def __init__(self, socket_path: Path, ram: int, panic: bool = True) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(socket_path))
        self.ram, self.panic = ram, panic
        self.commands: list[dict] = []

    def _send(self, obj: dict) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\r\n")

    def run(self) -> None:
        self._send(GREETING)
        decoder, pending = json.JSONDecoder(), ""
        while chunk := self.sock.recv(4096):
            pending += chunk.decode()
            while pending.strip():
                try:
                    request, end = decoder.raw_decode(pending.lstrip())
                except ValueError:
                    break
                pending = pending.lstrip()[end:]
                self.commands.append(request)
                self._answer(request)
                if request["execute"] == "quit":
                    self.sock.close()
                    return

    def _answer(self, request: dict) -> None:
        command, ident = request["execute"], request.get("id")
        reply: dict = {"return": {}}
        if command == "query-memory-size-summary":
            reply = {"return": {"base-memory": self.ram}}
        elif command == "dump-guest-memory":
            target = Path(request["arguments"]["protocol"].removeprefix("file:"))
            target.write_bytes(b"\x7fELF" + b"\0" * 60)
        if ident is not None:
            reply["id"] = ident
        self._send(reply)
        if command == "qmp_capabilities" and self.panic:
            self._send({"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}})
            self._send({"event": "GUEST_PANICKED", "data": {"action": "pause"},
                        "timestamp": {"seconds": 2, "microseconds": 5}})


def test_qemu_gets_pvpanic_vmcoreinfo_pause_on_panic_and_a_client_monitor(tmp_path):
    args = panic_args(tmp_path / "p.sock")
    assert args[args.index("-action") + 1] == "panic=pause"
    assert {"pvpanic-pci", "vmcoreinfo"} <= {args[i + 1] for i, a in enumerate(args) if a == "-device"}
    chardev = args[args.index("-chardev") + 1]
    assert f"path={tmp_path / 'p.sock'}" in chardev and "server" not in chardev  # QEMU connects to us


def test_a_panic_is_dumped_to_the_target_with_its_sidecar_then_qemu_quits(tmp_path):
    watcher = PanicWatcher(max_mb=512)
    target = tmp_path / "g1.scenario.vmcore"
    watcher.attach(target, {"modules": ["/cache/debug/cnlab.ko"], "kernel": "6.1"})
    qemu = FakeQemuMonitor(watcher.socket_path, ram=256 << 20)
    qemu.start()
    assert watcher.finished.wait(10)
    qemu.join(10)
    executed = [c["execute"] for c in qemu.commands]
    assert executed[-2:] == ["dump-guest-memory", "quit"]
    dump = next(c for c in qemu.commands if c["execute"] == "dump-guest-memory")["arguments"]
    assert dump == {"paging": False, "protocol": f"file:{target}", "format": "elf"}
    side = read_sidecar(target)
    assert side == watcher.result
    assert side["bytes"] == 64 and side["seconds"] >= 0 and side["guest_ram_bytes"] == 256 << 20
    assert side["modules"] == ["/cache/debug/cnlab.ko"] and side["panic"] == {"action": "pause"}
    assert not watcher.socket_path.exists()


def test_a_guest_over_the_bound_is_not_dumped_and_the_sidecar_says_why(tmp_path):
    watcher = PanicWatcher(max_mb=128)
    target = tmp_path / "big.vmcore"
    watcher.attach(target)
    qemu = FakeQemuMonitor(watcher.socket_path, ram=1024 << 20)
    qemu.start()
    assert watcher.finished.wait(10)
    qemu.join(10)
    assert "dump-guest-memory" not in [c["execute"] for c in qemu.commands]
    assert qemu.commands[-1]["execute"] == "quit"
    assert not target.exists()
    assert "1024 MiB is over the 128 MiB" in read_sidecar(target)["skipped"]


def test_opted_out_or_not_attached_a_panic_just_ends_the_guest(tmp_path):
    for enabled, attach in ((False, True), (True, False)):
        watcher = PanicWatcher(enabled=enabled)
        target = tmp_path / f"{enabled}-{attach}.vmcore"
        if attach:
            watcher.attach(target)
        qemu = FakeQemuMonitor(watcher.socket_path, ram=256 << 20)
        qemu.start()
        assert watcher.finished.wait(10)
        qemu.join(10)
        assert [c["execute"] for c in qemu.commands] == ["qmp_capabilities", "quit"]
        assert not target.exists() and not vmcore_sidecar(target).exists() and watcher.result is None


def test_a_watcher_whose_qemu_never_came_is_closed(tmp_path):
    watcher = PanicWatcher()
    watcher.close()
    assert watcher.finished.wait(10)
    assert not watcher.socket_path.parent.exists()
