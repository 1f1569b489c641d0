"""One QEMU guest: boot to SSH-ready, run commands, stop, never leak.

Boot sequence (every wait is a named deadline, none is a bare sleep):

1. write the per-boot initramfs (base archive + keys + lab modules);
2. listen on the QMP and readiness sockets, spawn QEMU paused (``-S``) with
   :func:`lab.host.procs.spawn_owned`;
3. accept QEMU's QMP connection (the greeting) and its readiness channel;
4. add the SSH port forward over QMP, retrying another port on collision;
5. ``cont``; wait for ``CNLAB-READY nonce=…`` on ttyS1 while watching QEMU's
   pidfd, so a guest that dies fails at once with the console tail;
6. connect SSH with the pinned host key.

With ``GuestSpec.snapshots`` set, a guest starts by restoring the saved
state of its spec instead (:mod:`lab.guest.snapshot`, which saves one first
if there is none): QEMU starts waiting for the state, maps the saved RAM
copy-on-write and loads the device state; after ``cont`` the host writes a
resume line (new nonce, the wall clock, random bytes for the CRNG) to the
readiness port, and the guest answers with a ready line that says what it
did.  A restored guest that fails any check is stopped, its saved state
discarded, and the guest boots cold, with a warning.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import re
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from lab.command import CommandResult
from lab.deadline import Deadline
from lab.errors import BootError, BootTimeout, GuestCrashed, GuestError, LabError, SnapshotError, UsageError
from lab.guest.accel import Accel
from lab.guest.calibration import read_lpj, record_lpj
from lab.guest.files import put_files
from lab.guest.netns import GUEST_ADDRESS, GuestLink
from lab.guest.qemu_argv import BootPaths, GuestShape, SavedState, kernel_cmdline, qemu_argv
from lab.guest.ssh import SSHSession
from lab.host.procs import spawn_owned, stop_process
from lab.image.build import GuestImage
from lab.image.cpio import CpioEntry, write_newc

__all__ = ["Guest", "GuestSpec", "GuestState", "BootTiming", "RESTORE_SECONDS"]

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
#: Boot budget under KVM; multiplied by the accelerator's timeout scale.
BOOT_SECONDS = 30.0
#: Budget of a restore under KVM (times the accelerator's timeout scale); past it the guest boots cold.
RESTORE_SECONDS = 10.0
PORT_RANGE = (20000, 60000)
GUEST_MODULE_DIR = "/run/cnlab"
NETWORKS = ("user", "tap")
#: A connection on the lab's own link whose data stays unacknowledged this long is dead.
DEAD_LINK_S = 8.0
_READY = re.compile(rb"CNLAB-READY nonce=(\S+) cpus=(\d+) modules=(\S*)(?: lpj=(\d+))?((?: [\w.-]+=\S*)*)\r?\n")
_HELD = re.compile(rb"CNLAB-HELD nonce=(\S+) sshd=(\d+)\r?\n")
_TAINTED = re.compile(rb"CNLAB-TAINTED id=(\S+) tainted=(\d+) err=(\d+)\r?\n")
#: Budget of one question to the init over the readiness port (times the accelerator's timeout scale).
PORT_ANSWER_SECONDS = 30.0
#: The file descriptor name a saved state travels under to QEMU (QMP getfd).
STATE_FD_NAME = "cnlab-state"


@enum.unique
class GuestState(enum.Enum):
    NEW = "new"
    BOOTING = "booting"
    READY = "ready"
    STOPPED = "stopped"
    BROKEN = "broken"


#: How long giving up a restored guest waits for its SSH connect to end.
ABANDON_WAIT_S = 2.0


class _Connecting:
    """An SSH connect running in a thread of its own, for a guest that answers while it finishes starting."""

    def __init__(self, session: SSHSession, deadline: Deadline, name: str) -> None:
        self._session = session
        self._deadline = deadline
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._connect, name=name, daemon=True)
        self._thread.start()

    def _connect(self) -> None:
        try:
            self._session.connect(self._deadline)
        except BaseException as exc:  # handed to wait()
            self._error = exc

    def wait(self) -> None:
        """Until the connect ends (it has its deadline); its error, if it failed."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """Cut the connect short and close the session (the guest failed while SSH was on its way).  A TCP
        connect still under way is not waited for: it ends on its own timeout, and the session stays given up."""
        self._session.interrupt()
        self._thread.join(ABANDON_WAIT_S)
        self._session.close()


@dataclass(frozen=True)
class GuestSpec:
    """What to boot: image, shape, accelerator and what goes into the guest."""

    image: GuestImage
    accel: Accel
    shape: GuestShape = GuestShape()
    modules: tuple[Path, ...] = ()
    load_modules: bool = True
    cmdline: tuple[str, ...] = ()
    qemu_extra: tuple[str, ...] = ()
    name: str = "guest"
    qemu_binary: str = QEMU_BINARY
    #: "user": QEMU user-mode networking, SSH through a forwarded loopback port.
    #: "tap": a tap in a bridge in a namespace of the lab's own (lab.guest.netns), for link faults.
    network: str = "user"
    #: The delay-loop calibration file (lab.guest.calibration): its lpj= goes on the command line,
    #: and a guest that measured one records it there.  None: the kernel calibrates as usual.
    calibration: Path | None = None
    #: Where saved guest states live (lab.guest.snapshot): the guest starts by restoring the saved state
    #: of this spec, saved first if there is none, and boots cold if that fails.  None: always cold.
    snapshots: Path | None = None
    #: Files the guest holds from its start (``(host path, absolute guest path, mode)``) and symbolic links
    #: (``(guest path, target)``): a cold guest gets them in one copy right after SSH-ready, a restored one has
    #: the files from its saved state, whose key covers their content (lab.guest.files.files_key), and gets
    #: only the links (they live on the root disk, read-only while a state is saved).
    files: tuple[tuple[Path, str, int], ...] = ()
    links: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise UsageError(f"guest network must be one of {', '.join(NETWORKS)}, got {self.network!r}")


@dataclass
class BootTiming:
    """Seconds from spawn to each boot milestone."""

    qmp: float = 0.0
    ready: float = 0.0
    ssh: float = 0.0
    marks: dict = field(default_factory=dict)
    #: "cold", "restore", or "cold after a failed restore"
    mode: str = ""


def _pidfd(pid: int) -> int:
    return os.pidfd_open(pid)


class Guest:
    """A guest's whole life; use as a context manager so it is always stopped."""

    def __init__(self, spec: GuestSpec, log_dir: Path | None = None, keep_workdir: bool = False,
                 saved: SavedState | None = None) -> None:
        """``saved``: the RAM file of a guest whose state :meth:`save_state` will save (lab.guest.snapshot);
        such a guest always boots cold."""
        self.spec = spec
        self.state = GuestState.NEW
        self.workdir = Path(tempfile.mkdtemp(prefix=f"cnlab-{spec.name}-"))
        self.log_dir = log_dir or self.workdir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.console_log = self.log_dir / f"{spec.name}.console.log"
        self.keep_workdir = keep_workdir
        self.timing = BootTiming()
        self.ssh_port: int | None = None
        self.ready_info: dict = {}
        self._proc: subprocess.Popen | None = None
        self._pidfd: int | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._qmp_loop: asyncio.AbstractEventLoop | None = None
        #: The guest's private link (network "tap"), for link faults; None on user networking.
        self.link: GuestLink | None = None
        self._ready_conn: socket.socket | None = None
        self._port_lock = threading.Lock()  # one question to the init at a time
        self._port_questions = 0
        self._ssh: SSHSession | None = None
        self._broken: LabError | None = None
        self._nonce = os.urandom(8).hex()
        self._given_lpj: int | None = None  # set by cmdline(): the lpj= this boot got
        self._saved = saved  # RAM as a file: saving (share) or restoring (copy-on-write)
        self._restore_cmdline: str | None = None  # a restore: the saved guest's command line
        #: Why a restore failed and the guest booted cold instead (None: no restore failed).
        self.restore_failure: str | None = None
        #: The command line QEMU was last started with.
        self.argv_used: list[str] = []

    # ------------------------------------------------------------- guards
    def _require(self, method: str, *states: GuestState) -> None:
        if self._broken is not None:
            raise self._broken
        if self.state not in states:
            raise GuestError(f"{method}() needs state {'/'.join(s.value for s in states)}, "
                             f"guest {self.spec.name} is {self.state.value}")

    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- boot
    @property
    def boot_seconds(self) -> float:
        return BOOT_SECONDS * self.spec.accel.timeout_scale

    def write_initrd(self) -> Path:
        """Write this boot's initramfs: the cached base plus keys and modules."""
        keys = self.spec.image.keys
        entries = [
            CpioEntry("cnlab", None, 0o700),
            CpioEntry("cnlab/ssh_host_ecdsa_key", keys.host_key.read_bytes(), 0o600),
            CpioEntry("cnlab/authorized_keys", keys.client_pub.read_bytes(), 0o600),
        ]
        for module in self.spec.modules:
            entries.append(CpioEntry(f"cnlab/{module.name}", module.read_bytes(), 0o600))
        initrd = self.workdir / "initrd"
        with open(initrd, "wb") as out:
            with open(self.spec.image.initramfs, "rb") as base:
                shutil.copyfileobj(base, out)
            out.write(write_newc(entries))
        return initrd

    def cmdline(self) -> str:
        """The kernel command line of this boot (a restore keeps the saved guest's)."""
        if self._restore_cmdline is not None:
            return self._restore_cmdline
        extra = [f"cnlab.nonce={self._nonce}", *self.spec.cmdline]
        if self._saved is not None:  # virtio disks (qemu_argv.disk_args), root read-only until a resume
            extra += ["cnlab.root=/dev/vda", "cnlab.snapshot"]
        if self.spec.image.modules_disk is not None:
            # the second NVMe controller or virtio disk (qemu_argv.disk_args)
            extra.append("cnlab.moddisk=/dev/vdb" if self._saved is not None else "cnlab.moddisk=/dev/nvme1n1")
        if self.spec.load_modules and self.spec.modules:
            extra.append("cnlab.load=" + ",".join(f"{GUEST_MODULE_DIR}/{m.name}" for m in self.spec.modules))
        if self.link is not None:
            extra += self.link.guest_cmdline()
        self._given_lpj = read_lpj(self.spec.calibration) if self.spec.calibration else None
        if self._given_lpj:
            extra.append(f"lpj={self._given_lpj}")
        return kernel_cmdline(extra)

    def argv(self, paused: bool = True) -> list[str]:
        """QEMU's command line for this guest (a restore: the saved guest's, waiting for its state)."""
        paths = BootPaths(
            kernel=self.spec.image.boot_kernel,
            # a restore needs no per-boot files: the saved guest has them
            initrd=self.spec.image.initramfs if self._restore_cmdline is not None else self.workdir / "initrd",
            rootfs=self.spec.image.rootfs,
            modules_disk=self.spec.image.modules_disk,
            console_log=self.console_log,
            qmp_socket=self.workdir / "qmp.sock",
            ready_socket=self.workdir / "ready.sock",
        )
        return qemu_argv(self.spec.qemu_binary, self.spec.shape, self.spec.accel, paths, self.cmdline(),
                         list(self.spec.qemu_extra), paused=paused,
                         tap_fd=self.link.tap_fd if self.link is not None else None, saved=self._saved)

    def start(self) -> None:
        """Restore or boot until SSH works; on failure, raise and leave no QEMU behind."""
        self._require("start", GuestState.NEW)
        self.state = GuestState.BOOTING
        try:
            self._start()
            self.state = GuestState.READY
            self._install_files()
        except BaseException as exc:
            tail = self.console_tail()
            self._teardown()
            self.state = GuestState.BROKEN
            if isinstance(exc, GuestError) and not exc.console_tail:
                exc.console_tail = tail
            if isinstance(exc, LabError):
                self._broken = exc
            raise

    def _start(self) -> None:
        from lab.guest.snapshot import snapshot_for  # it boots Guests itself

        snapshot = None
        if self.spec.snapshots is not None and self._saved is None:
            snapshot = snapshot_for(self.spec)
        if snapshot is not None:
            seconds = min(self.boot_seconds, RESTORE_SECONDS * self.spec.accel.timeout_scale)
            try:
                self._restore(Deadline(seconds, f"guest {self.spec.name} to restore"), snapshot)
                self.timing.mode = "restore"
                snapshot.restored()
                return
            except (LabError, OSError, QMPError, EOFError) as exc:
                reason = str(exc).split("\n--- console tail")[0]
                tail = self.console_tail(12)
                self._stop_qemu()
                snapshot.discard(reason)
                log.warning("guest %s: the restored guest failed (%s); its saved state %s is discarded and the "
                            "guest boots cold%s", self.spec.name, reason, snapshot.key,
                            f"\n--- console tail of the restore ---\n{tail}" if tail else "")
                self.restore_failure = reason
                self._reset_for_cold_boot()
        self._boot(Deadline(self.boot_seconds, f"guest {self.spec.name} to boot"))
        self.timing.mode = "cold after a failed restore" if self.restore_failure else "cold"

    def _install_files(self) -> None:
        """Put the spec's files and links in place, in one command: a restored guest has the files from its saved
        state; the links live on the root disk, which the guest whose state is saved has read-only."""
        files = () if self.timing.mode == "restore" else self.spec.files
        saving = self._saved is not None and not self._saved.incoming
        links = () if saving else self.spec.links
        if files or links:
            copying = time.monotonic()
            put_files(self, files, links)
            self.timing.marks["files"] = time.monotonic() - copying

    def _reset_for_cold_boot(self) -> None:
        """Forget a failed restore: new nonce, timings and sockets, the cold boot's own argv."""
        self._nonce = os.urandom(8).hex()
        self._saved = None
        self._restore_cmdline = None
        self.timing = BootTiming()
        self.ssh_port = None
        self.ready_info = {}
        for name in ("qmp.sock", "ready.sock"):
            (self.workdir / name).unlink(missing_ok=True)

    def _listen(self, name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(str(self.workdir / name))
        sock.listen(1)
        return sock

    def _qmp_client(self, conn: socket.socket) -> QEMUMonitorProtocol:
        """A QMP client on an event loop of its own, closed at teardown.

        The synchronous client adopts the calling thread's loop; a guest
        started from a pool thread would leave that loop unclosed.
        """
        self._qmp_loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._qmp_loop)
        try:
            return QEMUMonitorProtocol(conn)
        finally:
            asyncio.set_event_loop(None)

    def _spawn_and_connect(self, deadline: Deadline) -> float:
        """Spawn QEMU paused, accept its QMP (negotiated) and readiness connections; the spawn time."""
        qmp_listener = self._listen("qmp.sock")
        ready_listener = self._listen("ready.sock")
        if self.spec.network == "tap":
            self.link = GuestLink()
        qemu_log = open(self.workdir / "qemu.stderr", "wb")
        self.argv_used = self.argv()
        try:
            self._proc = spawn_owned(self.argv_used, stdout=qemu_log, stderr=subprocess.STDOUT,
                                     pass_fds=(self.link.tap_fd,) if self.link is not None else ())
        finally:
            qemu_log.close()
        self._pidfd = _pidfd(self._proc.pid)
        spawned = time.monotonic()
        try:
            qmp_conn = self._accept(qmp_listener, deadline, "QMP connection")
            self._wait_readable(qmp_conn, deadline, "QMP greeting")
            self._qmp = self._qmp_client(qmp_conn)
            try:
                self._qmp.connect(negotiate=True)
            except (QMPError, OSError, EOFError) as exc:
                if self._proc.poll() is not None:
                    raise self._qemu_exit_error() from exc
                raise BootError(f"guest {self.spec.name}: QMP negotiation failed: {exc}") from exc
            self._qmp.settimeout(10.0 * self.spec.accel.timeout_scale)
            self._ready_conn = self._accept(ready_listener, deadline, "readiness channel")
        finally:
            qmp_listener.close()
            ready_listener.close()
        self.timing.qmp = time.monotonic() - spawned
        return spawned

    def _boot(self, deadline: Deadline) -> None:
        self.write_initrd()
        spawned = self._spawn_and_connect(deadline)
        if self.link is None:
            self.ssh_port = self._forward_ssh_port()
        self._qmp.cmd("cont")
        self.ready_info = self._wait_ready(deadline)
        if self.spec.calibration is not None and self.ready_info["lpj"] and not self._given_lpj:
            record_lpj(self.spec.calibration, self.ready_info["lpj"])
        self.timing.ready = time.monotonic() - spawned
        self._ssh = self._ssh_session()
        self._ssh.connect(deadline)
        self.timing.ssh = time.monotonic() - spawned

    def _restore(self, deadline: Deadline, snapshot) -> None:
        """Start QEMU on ``snapshot`` (a :class:`lab.guest.snapshot.Snapshot`), resume and check the guest."""
        from lab.guest.snapshot import check_restored, resume_line

        self._saved = SavedState(snapshot.ram_file, share=False, incoming=True)
        self._restore_cmdline = snapshot.cmdline
        # The restored guest's console goes on where the saved guest's boot left it.
        self.console_log.write_bytes(snapshot.boot_console() + f"cnlab: --- restored from saved state "
                                     f"{snapshot.key} ---\n".encode())
        with snapshot.in_use():
            spawned = self._spawn_and_connect(deadline)
            self._set_migration_capabilities()
            with open(snapshot.state_file, "rb") as state:
                self._qmp.send_fd_scm(state.fileno())
            self._qmp_booting("getfd", fdname=STATE_FD_NAME)
            self._qmp_booting("migrate-incoming", uri=f"fd:{STATE_FD_NAME}")
            self._wait_migration(deadline, "loading the saved state")
        self.timing.marks["state_loaded"] = time.monotonic() - spawned
        if self.link is None:
            self.ssh_port = self._forward_ssh_port()
        self._qmp.cmd("cont")
        self._ready_conn.sendall(resume_line(self._nonce))
        # The saved sshd is held until the guest's CRNG is reseeded (images/init/cnlab-init.c), so SSH may
        # start now and shake hands while the init finishes the resume.
        session = self._ssh_session()
        connecting = _Connecting(session, deadline, f"ssh-{self.spec.name}")
        try:
            self.ready_info = self._wait_ready(deadline)
            self.timing.ready = time.monotonic() - spawned
            problems = check_restored(self.ready_info, self.spec.shape.cpus, snapshot.build_ids)
            if problems:
                raise SnapshotError(f"guest {self.spec.name}: the restored guest failed its checks: "
                                    f"{'; '.join(problems)}")
        except BaseException:
            connecting.abandon()
            raise
        connecting.wait()
        self._ssh = session
        self.timing.ssh = time.monotonic() - spawned

    def _qmp_booting(self, command: str, **arguments) -> object:
        """A QMP command while starting: QEMU exiting under it is reported with QEMU's last words."""
        try:
            return self.qmp(command, **arguments)
        except GuestError as exc:
            try:  # a QMP socket that closed under a command: QEMU is exiting, wait (bounded) to say why
                self._proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                raise exc from None
            raise self._qemu_exit_error() from exc

    def _set_migration_capabilities(self) -> None:
        # x-ignore-shared: the RAM is a file of its own, not part of the stream; events: MIGRATION events
        self._qmp_booting("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True},
                                                          {"capability": "events", "state": True}])

    def _wait_migration(self, deadline: Deadline, what: str) -> None:
        """Until QEMU reports the migration (saving or loading a state) completed; QEMU exiting fails it."""
        assert self._qmp is not None and self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise self._qemu_exit_error()
            if deadline.expired():
                raise BootTimeout(f"guest {self.spec.name}: {what} did not finish within {deadline.seconds:.0f} s")
            try:
                event = self._qmp.pull_event(wait=min(0.5, max(deadline.remaining(), 0.01)))
            except TimeoutError:
                continue
            except (QMPError, OSError, EOFError) as exc:
                if self._proc.poll() is not None:
                    raise self._qemu_exit_error() from exc
                raise SnapshotError(f"guest {self.spec.name}: QMP failed while {what}: {exc}") from exc
            if event is None or event.get("event") != "MIGRATION":
                continue
            status = event.get("data", {}).get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                detail = ""
                try:
                    info = self._qmp.cmd("query-migrate")
                    detail = f": {info.get('error-desc', '')}" if isinstance(info, dict) else ""
                except (QMPError, OSError, EOFError):
                    pass
                raise SnapshotError(f"guest {self.spec.name}: {what} {status}{detail}")

    def save_state(self, path: Path) -> None:
        """Stop this guest and save its device state to ``path`` (its RAM is already the ``saved`` file).

        The guest must have been made with ``saved=SavedState(..., share=True)``; it is stopped afterwards.
        """
        self._require("save_state", GuestState.READY)
        if self._saved is None or not self._saved.share:
            raise UsageError(f"guest {self.spec.name}: only a guest started with a shared RAM file can be saved")
        assert self._qmp is not None
        if self._ssh is not None:
            self._ssh.close()
        deadline = Deadline(self.boot_seconds, f"guest {self.spec.name} to save its state")
        self._hold_sshd(deadline)
        self._set_migration_capabilities()
        self.qmp("stop")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self._qmp.send_fd_scm(fd)
        finally:
            os.close(fd)
        self.qmp("getfd", fdname=STATE_FD_NAME)
        self.qmp("migrate", uri=f"fd:{STATE_FD_NAME}")
        self._wait_migration(deadline, "saving its state")
        self.stop()

    def _hold_sshd(self, deadline: Deadline) -> None:
        """Have the init stop sshd, so every guest restored from the state about to be saved keeps it stopped
        until its CRNG is reseeded (see ``images/init/cnlab-init.c``)."""
        assert self._ready_conn is not None
        self._ready_conn.sendall(f"CNLAB-HOLD nonce={self._nonce}\n".encode())
        match = self._read_ready_port(_HELD, deadline, "answer to holding sshd")
        if match.group(2) != b"0":
            raise SnapshotError(f"guest {self.spec.name}: the init could not hold sshd for the save "
                                f"(errno {match.group(2).decode()})")

    def _ssh_session(self) -> SSHSession:
        keys = self.spec.image.keys
        if self.link is None:
            return SSHSession("127.0.0.1", self.ssh_port, keys.client_key, keys.known_hosts,
                              connect_timeout=10.0 * self.spec.accel.timeout_scale)
        # On the lab's own link a broken connection is expected (link faults): notice it
        # within DEAD_LINK_S and keep each connect attempt short, so reconnecting is quick.
        link = self.link
        return SSHSession(GUEST_ADDRESS, 22, keys.client_key, keys.known_hosts,
                          connect_timeout=5.0 * self.spec.accel.timeout_scale, dead_link_s=DEAD_LINK_S,
                          open_socket=lambda timeout: link.connect(22, timeout))

    def _qemu_exit_error(self) -> BootError:
        assert self._proc is not None
        status = self._proc.wait()
        stderr = (self.workdir / "qemu.stderr").read_text(errors="replace").strip()
        detail = f": {stderr.splitlines()[-1]}" if stderr else ""
        return BootError(f"QEMU exited with status {status} before guest {self.spec.name} was ready{detail}")

    def _wait_readable(self, sock: socket.socket, deadline: Deadline, what: str) -> None:
        assert self._pidfd is not None
        while True:
            readable, _, _ = select.select([sock, self._pidfd], [], [], deadline.remaining())
            if self._pidfd in readable:
                raise self._qemu_exit_error()
            if sock in readable:
                return
            if deadline.expired():
                raise BootTimeout(f"guest {self.spec.name}: no {what} within {deadline.seconds:.0f} s "
                                  f"({self.spec.accel.name})")

    def _accept(self, listener: socket.socket, deadline: Deadline, what: str) -> socket.socket:
        self._wait_readable(listener, deadline, what)
        conn, _ = listener.accept()
        return conn

    def _forward_ssh_port(self) -> int:
        """Ask QEMU to forward a random free loopback port to the guest's sshd."""
        assert self._qmp is not None
        rng = random.SystemRandom()
        last = ""
        for _ in range(64):
            port = rng.randrange(*PORT_RANGE)
            reply = self._qmp.cmd("human-monitor-command",
                                  **{"command-line": f"hostfwd_add net0 tcp:127.0.0.1:{port}-:22"})
            last = str(reply).strip()
            if not last:
                return port
        raise BootError(f"could not forward an SSH port for guest {self.spec.name}: {last}")

    def _wait_ready(self, deadline: Deadline) -> dict:
        match = self._read_ready_port(_READY, deadline, "readiness line")
        modules = match.group(3).decode()
        failed = [item for item in modules.split(",") if item.rsplit(":", 1)[-1] not in ("0", "none", "")]
        if modules != "none" and failed:
            raise BootError(f"guest {self.spec.name}: loading modules failed: {', '.join(failed)}")
        info = {"cpus": int(match.group(2)), "modules": modules, "lpj": int(match.group(4) or 0)}
        extra = dict(word.split("=", 1) for word in match.group(5).decode().split())
        if extra.get("restored") == "1":
            info["restored"] = extra
        return info

    def _read_ready_port(self, line: re.Pattern, deadline: Deadline, what: str, key: str | None = None) -> re.Match:
        """The first ``line`` for ``key`` (default: this guest's nonce; the line's first group) on the readiness
        port."""
        assert self._ready_conn is not None
        key = self._nonce if key is None else key
        buffer = b""
        while True:
            for match in line.finditer(buffer):
                if match.group(1).decode() == key:
                    return match
            self._wait_readable(self._ready_conn, deadline, what)
            chunk = self._ready_conn.recv(4096)
            if not chunk:
                raise self._channel_closed_error()
            buffer += chunk

    def _channel_closed_error(self) -> BootError:
        """QEMU closes its sockets as it exits: wait (bounded) for the exit to report why."""
        assert self._proc is not None
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return BootError(f"guest {self.spec.name}: readiness channel closed while QEMU still runs")
        return self._qemu_exit_error()

    # ------------------------------------------------------------ running
    @property
    def ssh(self) -> SSHSession:
        self._require("ssh", GuestState.READY)
        assert self._ssh is not None
        return self._ssh

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _gone(self) -> GuestCrashed:
        """QEMU exited under a ready guest: the guest is broken for good; the error to raise."""
        self.state = GuestState.BROKEN
        self._broken = GuestCrashed(f"guest {self.spec.name} is gone (QEMU exited)", self.console_tail())
        return self._broken

    def tainted(self) -> int:
        """The guest kernel's taint mask (``/proc/sys/kernel/tainted``), asked of its init over the readiness
        port (``CNLAB-TAINT``, see ``images/init/cnlab-init.c``): no SSH command, which cost 0.15-0.25 s on a
        restored TCG guest, twice per scenario.

        :raises GuestCrashed: QEMU exited.
        :raises GuestError: the init did not answer in time, or could not read the mask.
        """
        self._require("tainted", GuestState.READY)
        assert self._ready_conn is not None
        with self._port_lock:
            self._port_questions += 1
            token = f"{self._nonce}.{self._port_questions}"
            deadline = Deadline(PORT_ANSWER_SECONDS * self.spec.accel.timeout_scale,
                                f"guest {self.spec.name}'s init to report its taint")
            try:
                self._ready_conn.sendall(f"CNLAB-TAINT id={token}\n".encode())
                match = self._read_ready_port(_TAINTED, deadline, "answer about its kernel's taint", key=token)
            except (BootError, OSError) as exc:
                if not self.alive():
                    raise self._gone() from None
                detail = str(exc) if isinstance(exc, BootError) else f"guest {self.spec.name}: readiness port: {exc}"
                raise GuestError(detail) from None
        if match.group(3) != b"0":
            raise GuestError(f"guest {self.spec.name}: its init could not read /proc/sys/kernel/tainted "
                             f"(errno {match.group(3).decode()})")
        return int(match.group(2))

    def run(self, argv: list[str], timeout: float | None = None, check: bool = False, **kwargs) -> CommandResult:
        """Run a command in the guest over SSH (argv list, never a string)."""
        self._require("run", GuestState.READY)
        if not self.alive():
            raise self._gone()
        scaled = timeout * self.spec.accel.timeout_scale if timeout else None
        return self.ssh.run(argv, timeout=scaled, check=check, **kwargs)

    def qmp(self, command: str, **arguments) -> object:
        """Send a QMP command (``query-status``, ``stop``, ``cont``, …)."""
        self._require("qmp", GuestState.READY, GuestState.BOOTING)
        assert self._qmp is not None
        try:
            return self._qmp.cmd(command, **arguments)
        except (QMPError, OSError) as exc:
            raise GuestError(f"QMP {command} failed on guest {self.spec.name}: {exc}") from exc

    def pause(self) -> None:
        self.qmp("stop")

    def resume(self) -> None:
        self.qmp("cont")

    def status(self) -> str:
        reply = self.qmp("query-status")
        return reply["status"] if isinstance(reply, dict) else str(reply)

    def console_text(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    # ---------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop the guest (QMP quit, then kill the process group); idempotent."""
        if self.state in (GuestState.STOPPED, GuestState.NEW):
            self.state = GuestState.STOPPED
            self._cleanup_workdir()
            return
        self._teardown()
        if self.state != GuestState.BROKEN:
            self.state = GuestState.STOPPED

    def _teardown(self) -> None:
        self._stop_qemu()
        self._cleanup_workdir()

    def _stop_qemu(self) -> None:
        """Close SSH, QMP and the channels, quit QEMU (killing its group if need be); keep the workdir."""
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None
        if self._qmp is not None:
            if self.alive():
                try:
                    self._qmp.settimeout(2.0)
                    self._qmp.cmd("quit")
                except Exception:  # noqa: BLE001 - the guest may be gone already; the kill below is the backstop
                    pass
            try:
                self._qmp.close()
            except Exception:
                pass
            self._qmp = None
        if self._qmp_loop is not None:
            self._qmp_loop.close()
            self._qmp_loop = None
        if self._proc is not None:
            stop_process(self._proc, grace=3.0)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._ready_conn is not None:
            self._ready_conn.close()
            self._ready_conn = None
        if self.link is not None:
            self.link.close()
            self.link = None
        self._proc = None

    def _cleanup_workdir(self) -> None:
        if not self.keep_workdir:
            # The console log survives when it lives in a separate log_dir.
            shutil.rmtree(self.workdir, ignore_errors=True)
