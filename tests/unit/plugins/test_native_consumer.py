"""The native checker (images/init/cnlab-consume.c) against consume.py on the same datagrams (no guest).

The C program's ``--replay`` reads datagrams and their receive times from a
file instead of a socket; consume.py's ``handle()`` gets the same ones.  The
reports must agree on every key the accounting puts in them.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lab import kabi

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "images" / "init" / "cnlab-consume.c"
CONSUME = ROOT / "plugins" / "cnlab_plugins" / "guestside" / "consume.py"
#: The keys both reports share and must agree on (portid, rcvbuf, socket drops, parser differ by nature).
ACCOUNTING = ("received", "gaps", "reordered", "streams", "latency_us", "idle_latency_us", "series", "schema")
MS = 1_000_000


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    binary = tmp_path_factory.mktemp("native") / "cnlab-consume"
    subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def _consume_module():
    sys.path.insert(0, str(ROOT / "lab"))  # consume.py imports kabi from its own folder in the guest
    try:
        spec = importlib.util.spec_from_file_location("guestside_consume_native_test", CONSUME)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "lab"))


def _event(gen: int, cpu: int, seq: int, ts: int) -> bytes:
    return kabi.EVENT.pack(gen_id=gen, cpu=cpu, seq=seq, ts_ns=ts, len=32, flags=0)


def _msg(gen: int, cpu: int, seq: int, ts: int = 0) -> bytes:
    return kabi.frame_nl(kabi.frame_cn(0x20, 2, _event(gen, cpu, seq, ts), seq=seq & 0xFFFFFFFF))


def _bundle(events: list[tuple[int, int, int, int]]) -> bytes:
    inner = b"".join(kabi.frame_cn(0x20, 2, _event(*e) + bytes(8), seq=e[2] & 0xFFFFFFFF) for e in events)
    return kabi.frame_nl(kabi.frame_cn(0x20, 2, inner, flags=kabi.CNLAB_CN_F_BUNDLE))


def _proc(cpu: int, seq: int, ts: int) -> bytes:
    return kabi.frame_nl(kabi.frame_cn(1, 1, struct.pack("=IIQ", 2, cpu, ts) + bytes(24), seq=seq))


def _pad(message: bytes) -> bytes:
    return message + bytes(kabi.nlmsg_align(len(message)) - len(message))


#: (receive time in ns from the consumer's start, datagram): gaps, reorders, duplicates, bundles, several
#: messages in one datagram, cn_proc wrapping at 2**32, messages the checker must skip, a truncated one.
TRAFFIC = [
    (1 * MS, _msg(0, 0, 0, ts=1)),
    (2 * MS, _msg(0, 0, 1)),
    (3 * MS, _msg(0, 0, 4, ts=2 * MS)),             # 2 lost
    (4 * MS, _msg(0, 0, 3, ts=3 * MS)),             # late: a reorder
    (5 * MS, _msg(0, 0, 5)),
    (6 * MS, _msg(0, 0, 5)),                         # a duplicate
    (260 * MS, _pad(_msg(1, 1, 10)) + _msg(1, 0, 0)),  # two messages in one datagram; 10 lost on 1/1
    (300 * MS, _bundle([(2, 0, 0, 100), (2, 0, 1, 200), (2, 1, 7, 300), (2, 0, 3, 400)])),
    (510 * MS, _proc(0, 0xFFFFFFFE, 5)),
    (520 * MS, _proc(0, 0xFFFFFFFF, 6)),
    (530 * MS, _proc(0, 1, 7)),                      # wraps: 1 lost (0)
    (540 * MS, _proc(1, 40, 8)),
    (545 * MS, kabi.frame_nl(kabi.frame_cn(0x20, 2, b"short"))),  # under an event's size: skipped
    (550 * MS, _msg(10, 3, 2) + b"\x00\x01"),      # trailing bytes after the last message
    (551 * MS, _msg(0, 0, 6)[:30]),                # truncated: nothing in it counts
    (1250 * MS, _msg(0, 0, 2**64 - 1)),             # far behind: a reorder, not 2**64 gaps
    (1260 * MS, _msg(0, 0, 7, ts=1200 * MS)),
]
#: Receive times of the datagrams that reached a reader with nothing queued: only the first timestamped message
#: of each is an idle-reader sample (the 2nd message at 260 ms and the bundle's later events are not; the
#: datagram at 545 ms has no timestamp, and the flag does not carry over to the next datagram).
IDLE = frozenset({1 * MS, 260 * MS, 300 * MS, 510 * MS, 545 * MS, 1260 * MS})


def _replay_file(path: Path, traffic, idle=frozenset()) -> Path:
    with open(path, "wb") as f:
        for when, data in traffic:
            f.write(struct.pack("=IQ", len(data) | (1 << 31 if when in idle else 0), when) + data)
    return path


def _python(traffic, resync: bool, idle=frozenset()) -> dict:
    consume = _consume_module()
    checker = consume.Checker(resync, start_ns=0)
    for when, data in traffic:
        checker.datagram(consume.handle, bytearray(data), len(data), when, when in idle)
    return checker.report() | {"schema": consume.REPORT_SCHEMA}


def _native(binary: Path, path: Path, resync: bool) -> dict:
    argv = [str(binary), "--replay", str(path)] + (["--resync"] if resync else [])
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


@pytest.mark.parametrize("resync", [False, True])
def test_native_and_python_checkers_account_alike(native, tmp_path, resync):
    replay = _replay_file(tmp_path / "traffic.bin", TRAFFIC, IDLE)
    py, c = _python(TRAFFIC, resync, IDLE), _native(native, replay, resync)
    assert {k: c[k] for k in ACCOUNTING} == {k: py[k] for k in ACCOUNTING}
    assert c["parser"] == "native" and c["resync"] is resync and c["schema"] == 1
    # the traffic is what the comments above say it is
    assert py["streams"]["0/0"]["reordered"] == 3 and py["streams"]["proc/0"]["gaps"] == 1
    assert py["streams"]["2/0"]["gaps"] == 1 and py["received"] == 19
    assert [row[0] for row in py["series"]] == [0.0, 0.25, 0.5, 1.25]
    # each bin's largest latency (us) over its messages with a timestamp: 4 ms - 3 ms; 300 ms - 100 ns; ...
    assert [row[3] for row in py["series"]] == [1000.0, 299999.9, 540000.0, 60000.0]
    # idle-reader samples (us): 1 ms - 1 ns; none at 260 ms (no timestamps) or 545 ms; 300 ms - 100 ns (the
    # bundle's first event only); 510 ms - 5 ns; 1260 - 1200 ms
    assert py["idle_latency_us"] == {"p50": 299999.9, "p99": 510000.0, "max": 510000.0, "samples": 4}


def test_a_stream_far_behind_is_a_reorder_in_both(native, tmp_path):
    traffic = [(0, _msg(5, 0, 100)), (1, _msg(5, 0, 3))]
    py, c = _python(traffic, True), _native(native, _replay_file(tmp_path / "t.bin", traffic), True)
    assert c["streams"] == py["streams"] == {"5/0": {"received": 2, "gaps": 0, "reordered": 1, "baseline": 100,
                                                     "next": 101}}


def test_no_messages_gives_an_empty_report_in_both(native, tmp_path):
    py, c = _python([], False), _native(native, _replay_file(tmp_path / "t.bin", []), False)
    assert {k: c[k] for k in ACCOUNTING} == {k: py[k] for k in ACCOUNTING}
    assert c["latency_us"] == {"p50": None, "p99": None, "p999": None, "max": None, "samples": 0}
