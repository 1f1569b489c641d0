"""The checker consumer (``plugins/cnlab_plugins/guestside/consume.py``), run on the host on crafted datagrams."""

from __future__ import annotations

import pytest

from lab import kabi

from ..guestside.guest_modules import PLUGIN_GUESTSIDE, load_guest_module


def _datagram(gen_id: int, cpu: int, seq: int, ts: int = 1) -> bytes:
    event = kabi.EVENT.pack(gen_id=gen_id, cpu=cpu, seq=seq, ts_ns=ts, len=32, flags=0)
    return kabi.frame_nl(kabi.frame_cn(0x12, 1, event, seq=seq & 0xFFFFFFFF))


def test_consumer_checker_counts_gaps_and_reorders():
    consume = load_guest_module("consume", PLUGIN_GUESTSIDE)
    checker = consume.Checker(resync=False)
    for seq in (0, 1, 4, 3, 5):
        buf = _datagram(0, 1, seq)
        consume.handle(buf, len(buf), checker, 10)
    report = checker.report()
    assert report["received"] == 5 and report["gaps"] == 2 and report["reordered"] == 1
    assert report["streams"]["0/1"]["next"] == 6
    resync = consume.Checker(resync=True)
    for seq in (100, 101, 103):
        buf = _datagram(2, 0, seq)
        consume.handle(buf, len(buf), resync, 10)
    assert resync.report()["gaps"] == 1 and resync.report()["streams"]["2/0"]["baseline"] == 100


def test_consumer_checker_reads_cn_proc_per_cpu_counters():
    consume = load_guest_module("consume", PLUGIN_GUESTSIDE)
    checker = consume.Checker(resync=False)
    for seq in (7000, 7001, 7003):
        body = consume.PROC_EVENT.pack(1, 1, 5) + bytes(24)
        buf = kabi.frame_nl(kabi.frame_cn(1, 1, body, seq=seq))
        consume.handle(buf, len(buf), checker, 10)
    assert checker.report()["streams"]["proc/1"] == {"received": 3, "gaps": 1, "reordered": 0, "baseline": 7000,
                                                     "next": 7004}


def test_consumer_pyroute2_parser_matches_kabi_parser():
    pytest.importorskip("pyroute2")
    consume = load_guest_module("consume", PLUGIN_GUESTSIDE)
    parse = consume.pyroute2_parser()
    via_pyroute2, via_kabi = consume.Checker(False), consume.Checker(False)
    proc = kabi.frame_nl(kabi.frame_cn(1, 1, consume.PROC_EVENT.pack(2, 0, 9) + bytes(24), seq=500))
    for data in [_datagram(1, 0, 0) + _datagram(1, 0, 2), _datagram(1, 1, 0), proc]:
        parse(bytearray(data), len(data), via_pyroute2, 10)
        consume.handle(bytearray(data), len(data), via_kabi, 10)
    assert via_pyroute2.report() == via_kabi.report()
    assert via_kabi.report()["gaps"] == 1 and via_kabi.report()["received"] == 4


@pytest.mark.parametrize("parser", ["kabi", "pyroute2"])
def test_a_stopping_consumer_knows_when_each_sentinels_exit_arrived(parser):
    if parser == "pyroute2":
        pytest.importorskip("pyroute2")
    consume = load_guest_module("consume", PLUGIN_GUESTSIDE)
    parse = consume.pyroute2_parser() if parser == "pyroute2" else consume.handle
    checker = consume.Checker(resync=False)
    checker.sentinels = {4242, 4243}

    def proc_event(what: int, cpu: int, pid: int, seq: int) -> bytes:
        body = consume.PROC_EVENT.pack(what, cpu, 5) + consume.EXIT_PID.pack(pid) + bytes(20)
        return kabi.frame_nl(kabi.frame_cn(1, 1, body, seq=seq))

    fork_of_sentinel = proc_event(0x00000001, 0, 4242, 10)  # PROC_EVENT_FORK: its first field is the parent's
    other_exit = proc_event(consume.PROC_EVENT_EXIT, 1, 999, 20)
    for data in (fork_of_sentinel, other_exit, proc_event(consume.PROC_EVENT_EXIT, 0, 4242, 11)):
        parse(bytearray(data), len(data), checker, 10)
    assert checker.sentinels == {4243} and checker.received == 3
    data = proc_event(consume.PROC_EVENT_EXIT, 1, 4243, 21)
    parse(bytearray(data), len(data), checker, 10)
    assert checker.sentinels == set()
