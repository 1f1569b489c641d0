"""A guest's private control link: a tap in a bridge inside a network namespace.

For link faults the guest leaves user-mode networking and sits on a tap
device in a bridge inside a network namespace that only this lab process
holds (an anonymous namespace, pinned by a file descriptor and by QEMU's tap
descriptor, so it disappears with them: nothing to clean up after a crash).
The host talks to the guest from inside that namespace: SSH sockets are
created there, so nothing is routed through the host's own network and
every guest can use the same addresses.

Namespaces are per thread in Linux: each operation runs on a short-lived
thread that enters the namespace first, so the caller's thread never
changes namespace.  Links are configured with pyroute2.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute

from lab.errors import HostSetupError

__all__ = ["GuestLink", "HOST_ADDRESS", "GUEST_ADDRESS", "PREFIX"]

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000

HOST_ADDRESS = "10.203.0.1"
GUEST_ADDRESS = "10.203.0.2"
PREFIX = 24
BRIDGE = "cnlabbr0"
TAP = "cnlabtap0"

T = TypeVar("T")


def _libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _on_thread(target: Callable[[], T]) -> T:
    """Run ``target`` on a fresh thread and return its result (or raise its error)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = target()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="cnlab-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class GuestLink:
    """The namespace, bridge and tap of one guest; ``close()`` (or QEMU's exit) ends them.

    :attr tap_fd: the tap's file descriptor, handed to QEMU (``-netdev tap,fd=N``).
    """

    def __init__(self) -> None:
        try:
            self._ns_fd, self.tap_fd = _on_thread(self._create)
        except OSError as exc:
            raise HostSetupError(f"cannot create the guest's network namespace and tap: {exc}") from exc

    # ------------------------------------------------------------ creation
    def _create(self) -> tuple[int, int]:
        _libc_call("unshare", CLONE_NEWNET)
        ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        tap_fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(tap_fd, TUNSETIFF, struct.pack("16sH", TAP.encode(), IFF_TAP | IFF_NO_PI))
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                ipr.link("add", ifname=BRIDGE, kind="bridge")
                bridge = ipr.link_lookup(ifname=BRIDGE)[0]
                tap = ipr.link_lookup(ifname=TAP)[0]
                ipr.link("set", index=tap, master=bridge)
                ipr.addr("add", index=bridge, address=HOST_ADDRESS, prefixlen=PREFIX)
                ipr.link("set", index=bridge, state="up")
                ipr.link("set", index=tap, state="up")
        except BaseException:
            os.close(tap_fd)
            os.close(ns_fd)
            raise
        return ns_fd, tap_fd

    def _inside(self, target: Callable[[], T]) -> T:
        """Run ``target`` on a thread inside this link's namespace."""

        def entered() -> T:
            _libc_call("setns", self._ns_fd, CLONE_NEWNET)
            return target()

        return _on_thread(entered)

    # ----------------------------------------------------------------- use
    def connect(self, port: int, timeout: float) -> socket.socket:
        """A TCP socket connected to ``port`` of the guest, through the namespace."""
        return self._inside(lambda: socket.create_connection((GUEST_ADDRESS, port), timeout=timeout))

    def set_tap_up(self, up: bool) -> None:
        """Carrier on or off for the guest: the tap goes up or down (pyroute2)."""

        def change() -> None:
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=TAP)[0], state="up" if up else "down")

        self._inside(change)

    def tap_state(self) -> str:
        """The tap's operational state as the kernel reports it (``UP``, ``DOWN``...)."""

        def read() -> str:
            with IPRoute() as ipr:
                return ipr.get_links(ipr.link_lookup(ifname=TAP)[0])[0].get_attr("IFLA_OPERSTATE")

        return self._inside(read)

    def guest_cmdline(self) -> tuple[str, ...]:
        """What the guest's init needs to reach the host end of the link."""
        return (f"cnlab.ip={GUEST_ADDRESS}/{PREFIX}", f"cnlab.gw={HOST_ADDRESS}")

    def close(self) -> None:
        for fd in (self.tap_fd, self._ns_fd):
            if fd >= 0:
                os.close(fd)
        self.tap_fd = self._ns_fd = -1
