"""A vmcore when a guest kernel panics.

A guest with :func:`panic_args` carries a ``pvpanic-pci`` device (the guest
loads ``pvpanic_pci``) and QEMU's ``vmcoreinfo`` device (the guest's
``qemu_fw_cfg`` driver hands it the kernel's VMCOREINFO note, which a dump
needs for a debugger to read it), and QEMU pauses the guest when the kernel
panics (``-action panic=pause``) instead of letting ``panic=-1`` reboot it
into ``-no-reboot``'s exit.

A :class:`PanicWatcher` owns a second QMP monitor of that QEMU (QEMU
connects to a socket the watcher listens on, so nothing waits for a file
to appear).  A thread of its own waits on it for ``GUEST_PANICKED``; then
it writes ``dump-guest-memory`` (ELF, the whole guest RAM: bounded by
``max_mb``) to the target the guest's owner named with :meth:`attach`, a
JSON sidecar beside it (size, seconds to write, the panic event), and
quits QEMU, so the guest's owner sees the guest die as before, with the
dump already on disk.  A guest that panics before a target is named (at
boot) is quit at once, as without the watcher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

__all__ = ["PanicWatcher", "panic_args", "vmcore_sidecar", "read_sidecar", "DEFAULT_MAX_MB"]

log = logging.getLogger(__name__)

#: Largest guest RAM the watcher dumps (an ELF dump is as big as the guest's RAM).
DEFAULT_MAX_MB = 2048
#: Seconds a dump may take (a 1 GiB guest wrote in well under 10 s on the test host).
DUMP_TIMEOUT_S = 300.0


def panic_args(socket_path: Path) -> list[str]:
    """QEMU arguments: pvpanic, vmcoreinfo, pause on panic, and a monitor that connects to ``socket_path``."""
    return [
        "-device", "pvpanic-pci",
        "-device", "vmcoreinfo",
        "-action", "panic=pause",
        "-chardev", f"socket,id=panicmon,path={socket_path}",
        "-mon", "chardev=panicmon,mode=control",
    ]


def vmcore_sidecar(vmcore: Path) -> Path:
    """The JSON file written beside a vmcore (or instead of one that was not written)."""
    return vmcore.with_name(vmcore.name + ".json")


def read_sidecar(vmcore: Path) -> dict[str, Any] | None:
    """What the watcher recorded about ``vmcore``, or None if it recorded nothing."""
    try:
        return json.loads(vmcore_sidecar(vmcore).read_text())
    except (OSError, ValueError):
        return None


class PanicWatcher:
    """Waits on one QEMU's second monitor for a panic, dumps guest memory, then quits QEMU.

    :param max_mb: guests with more RAM than this are not dumped (the sidecar says why).
    :param enabled: False: quit at once on a panic, write nothing (the opt-out).
    """

    def __init__(self, max_mb: int = DEFAULT_MAX_MB, enabled: bool = True) -> None:
        self.max_mb = max_mb
        self.enabled = enabled
        self._dir = Path(tempfile.mkdtemp(prefix="cnlab-panic-"))
        self.socket_path = self._dir / "panic.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._listener.bind(str(self.socket_path))
        self._listener.listen(1)
        self._target: Path | None = None
        self._meta: dict[str, Any] = {}
        self._lock = threading.Lock()
        #: Set once the watcher is finished (QEMU gone, or the panic handled).
        self.finished = threading.Event()
        #: The sidecar's content after a panic was handled.
        self.result: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, name="cnlab-panic-watch", daemon=True)
        self._thread.start()

    def qemu_args(self) -> list[str]:
        return panic_args(self.socket_path)

    def attach(self, target: Path, meta: Mapping[str, Any] | None = None) -> None:
        """Dump to ``target`` on a panic from now on; ``meta`` goes into the sidecar (modules, kernel, ...)."""
        with self._lock:
            self._target = target
            self._meta = dict(meta or {})

    def close(self) -> None:
        """Stop listening (a QEMU that never started) and remove the socket folder."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread's accept()
        except OSError:
            pass
        try:
            self._listener.close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    # ------------------------------------------------------------ thread
    def _run(self) -> None:
        loop = None
        qmp = None
        try:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed before QEMU connected
            self._listener.close()
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            qmp = QEMUMonitorProtocol(conn)
            qmp.connect(negotiate=True)
            while True:
                event = qmp.pull_event(wait=True)
                if event and event.get("event") == "GUEST_PANICKED":
                    self._handle_panic(qmp, event)
                    return
        except Exception as exc:  # noqa: BLE001 - QEMU exiting ends the connection in several ways
            log.debug("panic watcher on %s ended: %s", self.socket_path, exc)
        finally:
            if qmp is not None:
                try:
                    qmp.close()
                except Exception:  # noqa: BLE001 - already closed by QEMU's exit
                    pass
            if loop is not None:
                loop.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            self.finished.set()

    def _handle_panic(self, qmp: QEMUMonitorProtocol, event: dict) -> None:
        with self._lock:
            target, meta = self._target, dict(self._meta)
        try:
            if target is not None and self.enabled:
                self.result = self._dump(qmp, target, event, meta)
        finally:
            try:
                qmp.cmd("quit")
            except Exception:  # noqa: BLE001 - QEMU may close the monitor before it answers
                pass

    def _dump(self, qmp: QEMUMonitorProtocol, target: Path, event: dict, meta: dict) -> dict[str, Any]:
        record: dict[str, Any] = {"path": str(target), "panic": event.get("data", {}),
                                  "panicked_at": event.get("timestamp"), **meta}
        memory = qmp.cmd("query-memory-size-summary")
        ram = int(memory.get("base-memory", 0)) if isinstance(memory, dict) else 0
        record["guest_ram_bytes"] = ram
        if ram > self.max_mb << 20:
            record["skipped"] = f"guest RAM {ram >> 20} MiB is over the {self.max_mb} MiB vmcore bound"
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            qmp.settimeout(DUMP_TIMEOUT_S)
            started = time.monotonic()
            reply = qmp.cmd_obj({"execute": "dump-guest-memory",
                                 "arguments": {"paging": False, "protocol": f"file:{target}", "format": "elf"}})
            record["seconds"] = round(time.monotonic() - started, 3)
            if "error" in reply:
                record["skipped"] = f"dump-guest-memory failed: {reply['error'].get('desc', reply['error'])}"
            else:
                record["bytes"] = target.stat().st_size
        vmcore_sidecar(target).write_text(json.dumps(record, indent=1))
        return record
