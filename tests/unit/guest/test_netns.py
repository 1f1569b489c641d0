"""The lab link's namespace, bridge and tap (real, on this host; no QEMU)."""

from __future__ import annotations

import os
import socket

import pytest

from lab.guest.netns import HOST_ADDRESS, TAP, GuestLink
from lab.guest.qemu_argv import net_args

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                                reason="needs root and /dev/net/tun")


@pytest.fixture
def link():
    made = GuestLink()
    yield made
    made.close()


def test_tap_lives_in_the_lab_namespace_not_the_hosts(link):
    assert TAP not in dict(socket.if_nameindex()).values()
    assert link._inside(lambda: TAP in dict(socket.if_nameindex()).values())


def test_tap_goes_down_and_up(link):
    link.set_tap_up(False)
    assert link.tap_state() == "DOWN"
    link.set_tap_up(True)
    assert link.tap_state() != "DOWN"  # no QEMU behind it: UNKNOWN or UP, never DOWN


def test_two_links_use_the_same_addresses_without_clashing():
    first, second = GuestLink(), GuestLink()
    try:
        # The host end of each link, bound inside each namespace: same address, no clash.
        for link in (first, second):
            sock = link._inside(lambda: socket.create_server((HOST_ADDRESS, 0)))
            sock.close()
    finally:
        first.close()
        second.close()


def test_the_caller_thread_never_changes_namespace(link):
    before = os.readlink("/proc/thread-self/ns/net")
    link.set_tap_up(True)
    assert os.readlink("/proc/thread-self/ns/net") == before


def test_qemu_gets_the_tap_by_descriptor():
    assert net_args(7)[:2] == ["-netdev", "tap,id=net0,fd=7"]
    assert net_args()[:2] == ["-netdev", "user,id=net0,ipv6=off"]
