"""lab/kabi.py must agree with kmod/include/uapi/cnlab.h.

The C side is measured by compiling kmod/tools/abi_dump.c with the host gcc
(sizeof/offsetof of every UAPI struct plus every constant, as JSON).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lab import kabi  # noqa: E402

ABI_DUMP_C = ROOT / "kmod" / "tools" / "abi_dump.c"


@pytest.fixture(scope="module")
def c_abi(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed: cannot measure the C side of the ABI")
    out = tmp_path_factory.mktemp("abi") / "abi_dump"
    res = subprocess.run([gcc, "-Wall", "-Wextra", "-Werror", "-o", str(out),
                          str(ABI_DUMP_C)], capture_output=True, text=True)
    if res.returncode != 0 and "linux/connector.h" in res.stderr:
        pytest.skip("kernel UAPI headers (linux-libc-dev) missing: " + res.stderr.strip())
    assert res.returncode == 0, res.stderr
    dump = subprocess.run([str(out)], capture_output=True, text=True, check=True)
    return json.loads(dump.stdout)


def test_every_c_struct_has_a_python_layout(c_abi):
    assert set(c_abi["structs"]) == set(kabi.LAYOUTS)


@pytest.mark.parametrize("name", sorted(kabi.LAYOUTS))
def test_struct_size_and_offsets(c_abi, name):
    c = c_abi["structs"][name]
    py = kabi.LAYOUTS[name]
    assert py.size == c["size"], f"{name}: size"
    c_fields = dict(c["fields"])
    if name == "cn_msg":
        # struct cb_id id -> idx + val in Python; flexible data[] at the end
        off, size = c_fields.pop("id")
        assert py.offsets["idx"] == (off, 4)
        assert py.offsets["val"] == (off + 4, size - 4)
        assert c_fields.pop("data") == [py.size, 0]
        py_fields = {k: v for k, v in py.offsets.items() if k not in ("idx", "val")}
    else:
        py_fields = dict(py.offsets)
    assert set(py_fields) == set(c_fields), f"{name}: field names"
    for fname, (off, size) in c_fields.items():
        assert py_fields[fname] == (off, size), f"{name}.{fname}"


def test_field_order_matches(c_abi):
    for name, c in c_abi["structs"].items():
        c_order = [f for f in c["fields"] if f not in ("id", "data")]
        py_order = [f for f, _ in kabi.LAYOUTS[name].fields
                    if not (name == "cn_msg" and f in ("idx", "val"))]
        assert c_order == py_order, name


def test_constants(c_abi):
    for cname, value in c_abi["consts"].items():
        assert hasattr(kabi, cname), f"kabi lacks {cname}"
        assert getattr(kabi, cname) == value, cname


# ---------------------------------------------------------------- round trips

def test_layout_round_trip_all():
    for layout in kabi.LAYOUTS.values():
        values = {}
        for i, (fname, spec) in enumerate(layout.fields):
            if isinstance(spec, kabi.Layout):
                values[fname] = spec.unpack(bytes(range(spec.size)))
            elif spec[0].isdigit():
                values[fname] = [i + k for k in range(int(spec[:-1]))]
            else:
                values[fname] = i + 1
        raw = layout.pack(**values)
        assert len(raw) == layout.size
        assert layout.unpack(raw) == values
        assert layout.pack(**layout.unpack(raw)) == raw


def test_unknown_field_rejected():
    with pytest.raises(KeyError):
        kabi.ECHO.pack(bogus=1)


def test_echo_request_framing():
    dg = kabi.encode_echo(user_ns=123, data=b"hello", seq=7)
    nl = kabi.NLMSGHDR.unpack(dg)
    assert nl["len"] == len(dg) == 16 + 20 + 16 + 32 + 5
    assert nl["type"] == kabi.NLMSG_DONE and nl["seq"] == 7
    (m,) = kabi.parse_datagram(dg)
    assert m.id == (kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL)
    assert m.seq == 7 and len(m.data) == 16 + 32 + 5
    hdr = kabi.HDR.unpack(m.data)
    assert hdr == {"version": 1, "flags": 0, "type": kabi.CNLAB_MSG_ECHO,
                   "status": 0, "len": 37, "reserved": 0}
    echo = kabi.ECHO.unpack(m.data, kabi.HDR.size)
    assert echo["user_ns"] == 123 and echo["data_len"] == 5
    assert m.data[-5:] == b"hello"


def _fake_reply(msg_type, status, body, seq=9, ack=1):
    hdr = kabi.HDR.pack(version=1, flags=kabi.CNLAB_F_REPLY, type=msg_type,
                        status=status, len=len(body))
    cn = kabi.frame_cn(kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL, hdr + body,
                       seq=seq, ack=ack + 1)
    return kabi.frame_nl(cn, seq=seq)


def test_echo_reply_decode():
    body = kabi.ECHO.pack(user_ns=1, rx_ns=2, tx_ns=3, cpu=1, data_len=3) + b"abc"
    (m,) = kabi.parse_datagram(_fake_reply(kabi.CNLAB_MSG_ECHO, 0, body))
    rep = kabi.decode_reply(m)
    assert rep.ok and rep.seq == 9 and rep.ack == 2
    assert rep.body["rx_ns"] == 2 and rep.body["data"] == b"abc"


def test_error_reply_decode():
    (m,) = kabi.parse_datagram(_fake_reply(kabi.CNLAB_MSG_GEN_START, -1, b""))
    rep = kabi.decode_reply(m)
    assert not rep.ok and rep.error_name == "EPERM" and rep.body == {}


def test_stats_reply_decode_and_invariant():
    cpu0 = dict(inserted=10, sent=6, drop_full=1, drop_nomem=1,
                drop_nolistener=1, drop_nlerr=0, queued=1, cpu=0, online=1,
                batch_hist=[1, 2, 0, 0, 0, 0, 0, 3])
    total = dict(cpu0, cpu=0xFFFFFFFF)
    body = kabi.STATS_REP.pack(nr_cpus=1, queue_limit=1024, total=total)
    body += kabi.CBUS_STATS.pack(**cpu0)
    (m,) = kabi.parse_datagram(_fake_reply(kabi.CNLAB_MSG_STATS, 0, body))
    rep = kabi.decode_reply(m)
    assert rep.body["queue_limit"] == 1024
    assert rep.body["cpus"][0]["batch_hist"][7] == 3
    assert kabi.check_invariant(rep.body["total"])
    assert kabi.check_invariant(rep.body["cpus"][0])


def test_gen_stats_reply_decode():
    cfg = kabi.GEN_START.unpack(kabi.gen_start_body(gen_id=3, idx=0x20, val=1,
                                                    group=2, count=5,
                                                    context="hardirq",
                                                    path="cbus"))
    body = kabi.GEN_STATS_REP.pack(gen_id=3, state=kabi.CNLAB_GEN_DONE,
                                   nr_cpus=2, cfg=cfg)
    body += kabi.GEN_CPU_STATS.pack(cpu=0, generated=5, ok=5)
    body += kabi.GEN_CPU_STATS.pack(cpu=1, generated=4, ok=3, err_full=1)
    (m,) = kabi.parse_datagram(_fake_reply(kabi.CNLAB_MSG_GEN_STATS, 0, body))
    rep = kabi.decode_reply(m)
    assert rep.body["cfg"]["context"] == kabi.CNLAB_CTX_HARDIRQ
    assert [c["generated"] for c in rep.body["cpus"]] == [5, 4]


def test_event_and_bundle_parsing():
    ev = [kabi.EVENT.pack(gen_id=1, cpu=0, seq=s, ts_ns=100 + s, len=40) + b"\0" * 8
          for s in range(3)]
    inner = b"".join(kabi.frame_cn(0x20, 1, e, seq=s) for s, e in enumerate(ev))
    outer = kabi.frame_cn(0x20, 1, inner, seq=0, flags=kabi.CNLAB_CN_F_BUNDLE)
    dg = kabi.frame_nl(outer) + b"\0" * (kabi.nlmsg_align(16 + len(outer)) - 16 - len(outer))
    dg += kabi.frame_nl(kabi.frame_cn(0x20, 1, ev[0], seq=0))
    msgs = kabi.parse_datagram(dg)
    assert len(msgs) == 2
    inner_msgs = kabi.expand(msgs[0])
    assert [kabi.decode_event(m.data)["seq"] for m in inner_msgs] == [0, 1, 2]
    assert kabi.expand(msgs[1])[0].data == ev[0]
    with pytest.raises(ValueError):
        kabi.parse_bundle(inner[:-1])


def test_walk_datagram_hands_over_events_bundles_and_the_rest():
    def event(gen_id, seq):
        return kabi.EVENT.pack(gen_id=gen_id, cpu=1, seq=seq, ts_ns=500 + seq, len=0)

    def message(cn: bytes) -> bytes:
        nl = kabi.frame_nl(cn)
        return nl + b"\0" * (kabi.nlmsg_align(len(nl)) - len(nl))

    inner = b"".join(kabi.frame_cn(0x20, 1, event(7, s), seq=s) for s in (0, 1))
    dg = message(kabi.frame_cn(0x20, 1, inner, flags=kabi.CNLAB_CN_F_BUNDLE))
    dg += message(kabi.frame_cn(0x20, 1, event(7, 2), seq=2))
    dg += message(kabi.frame_cn(0x21, 1, event(8, 0)))  # another generator's id
    dg += message(kabi.frame_cn(1, 1, b"\1" * 40, seq=9, flags=kabi.CNLAB_CN_F_BUNDLE))  # cn_proc: never a bundle
    dg += message(kabi.frame_cn(0x20, 1, b"short"))
    events, others = [], []

    def other(off, idx, val, seq, length):
        others.append((idx, seq, length, bytes(dg[off:off + 1])))

    bundles = kabi.walk_datagram(dg, len(dg), 42, lambda ev, now: events.append((ev[0], ev[2], now)), other,
                                 foreign=frozenset({1}))
    assert bundles == 1
    assert events == [(7, 0, 42), (7, 1, 42), (7, 2, 42), (8, 0, 42)]
    assert others == [(1, 9, 40, b"\1"), (0x20, 0, 5, b"s")]
    # Only the wanted ids; a truncated last message ends the walk
    events.clear()
    kabi.walk_datagram(dg, len(dg) - 3, 0, lambda ev, now: events.append(ev[0]), ids=frozenset({(0x20, 1)}))
    assert events == [7, 7, 7]


def test_fuzz_overrides():
    dg = kabi.encode_request(kabi.CNLAB_MSG_STATS, b"", hdr_len=99, version=2)
    hdr = kabi.HDR.unpack(dg, kabi.DATA_OFFSET)
    assert hdr["len"] == 99 and hdr["version"] == 2
    raw = kabi.frame_nl(kabi.frame_cn(1, 1, b"x", length=500), nl_len=8)
    assert kabi.NLMSGHDR.unpack(raw)["len"] == 8
    assert kabi.CN_MSG.unpack(raw, 16)["len"] == 500


# ------------------------------------------------------- docs/kmod.md sizes

DOCS_KMOD = ROOT / "docs" / "kmod.md"
# Every way docs/kmod.md states a UAPI struct's size: "`name` (N)", "`name{...}` (N)", "(`struct name`, N bytes)"
# and "struct name { ... };  /* N */".
_SIZE_PATTERNS = (
    r"`(?:struct )?(?P<name>c[a-z_]+)(?:\{[^}`]*\})?` \((?P<size>\d+)\)",
    r"\(`struct (?P<name>c[a-z_]+)`, (?P<size>\d+) bytes\)",
    r"struct (?P<name>c[a-z_]+) \{[^}]*\};\s*/\* (?P<size>\d+) \*/",
)


def doc_sizes(text: str) -> list[tuple[str, int, int]]:
    """(struct name, stated size, line) for every size figure of a UAPI struct in the text."""
    import re

    found = []
    for pattern in _SIZE_PATTERNS:
        for m in re.finditer(pattern, text):
            if m["name"] in kabi.LAYOUTS:
                found.append((m["name"], int(m["size"]), text.count("\n", 0, m.start()) + 1))
    return found


def test_doc_sizes_finds_every_form():
    text = ("| `cnlab_echo` (32) + data | `cnlab_fault{op, reserved, value}` (16) |\n"
            "GEN_START fields (`struct cnlab_gen_start`, 64 bytes):\n"
            "struct cnlab_event { __u32 gen_id; };  /* 32 */\n`not_a_struct` (5)\n")
    assert sorted(doc_sizes(text)) == [("cnlab_echo", 32, 1), ("cnlab_event", 32, 3), ("cnlab_fault", 16, 1),
                                       ("cnlab_gen_start", 64, 2)]


def test_docs_struct_sizes_match_the_abi(c_abi):
    """Every struct size docs/kmod.md states is the compiled one (and kabi's): the figures cannot drift.

    Each struct of the control table has its size stated; a change to the header that moves a size makes
    this fail until the docs say the new figure.
    """
    found = doc_sizes(DOCS_KMOD.read_text())
    wrong = [f"docs/kmod.md:{line}: {name} is {c_abi['structs'][name]['size']} bytes, not {size}"
             for name, size, line in found if size != c_abi["structs"][name]["size"]]
    wrong += [f"kabi.{name}: {kabi.LAYOUTS[name].size} != {size} in docs/kmod.md:{line}"
              for name, size, line in found if size != kabi.LAYOUTS[name].size]
    assert not wrong, "\n".join(wrong)
    stated = {name for name, _, _ in found}
    table = {"cnlab_hdr", "cnlab_echo", "cnlab_gen_start", "cnlab_gen_stop", "cnlab_stats_req", "cnlab_stats_rep",
             "cnlab_cbus_stats", "cnlab_gen_stats_req", "cnlab_gen_stats_rep", "cnlab_gen_cpu_stats",
             "cnlab_fault", "cnlab_bench", "cnlab_bench_result", "cnlab_event"}
    assert table <= stated, f"sizes not stated in docs/kmod.md: {sorted(table - stated)}"


# ------------------------------------------------------------------ bursts

def test_bursts_flag_and_limits_are_mirrored():
    """GEN_START's burst mode (CNLAB_GEN_F_BURSTS) and its bounds exist in kabi; the keyword sets the flag."""
    assert kabi.CNLAB_GEN_F_BURSTS & kabi.CNLAB_GEN_F_ALL
    assert kabi.CNLAB_GEN_F_BURSTS != kabi.CNLAB_GEN_F_BUNDLE
    for name in ("CNLAB_BURST_RATE_MAX", "CNLAB_BURST_MSGS_PER_S_MAX", "CNLAB_BURST_BYTES_MAX",
                 "CNLAB_BURST_BYTES_PER_S_MAX"):
        assert getattr(kabi, name) > 0, name
    cfg = kabi.GEN_START.unpack(kabi.gen_start_body(gen_id=1, rate=200, burst=64, bursts=True,
                                                    flags=kabi.CNLAB_GEN_F_BUNDLE))
    assert cfg["flags"] == kabi.CNLAB_GEN_F_BURSTS | kabi.CNLAB_GEN_F_BUNDLE
    assert cfg["rate"] == 200 and cfg["burst"] == 64
    assert kabi.GEN_START.unpack(kabi.gen_start_body(gen_id=1, bursts=False))["flags"] == 0


def test_gen_cpu_stats_count_bursts_and_overruns():
    """Per (generator, CPU): bursts emitted and missed, and direct sends lost to full listeners."""
    for name in ("err_overrun", "bursts", "bursts_missed"):
        assert name in kabi.GEN_CPU_STATS.offsets, name
    assert "drop_overrun" in kabi.CBUS_STATS.offsets
    s = dict(inserted=9, sent=4, drop_full=1, drop_nomem=1, drop_nolistener=1, drop_overrun=2, drop_nlerr=0,
             queued=0)
    assert kabi.check_invariant(s)
    assert not kabi.check_invariant(dict(s, drop_overrun=0))


def test_ledger_compares_counters_nothing_derives():
    good = {"inserted": 10, "enqueued": 8, "drop_full": 1, "drop_nomem": 1, "dequeued": 8, "sent": 6,
            "drop_nolistener": 1, "drop_overrun": 0, "drop_nlerr": 1}
    assert kabi.ledger_problems(good) == []
    assert kabi.ledger_problems(dict(good, inserted=11)) == ["inserted 11 != enqueued 8 + full 1 + nomem 1"]
    assert kabi.ledger_problems(dict(good, dequeued=7, sent=5)) == [
        "enqueued 8 != dequeued 7 (still on the queue or lost)"]
    assert kabi.ledger_problems(dict(good, sent=7)) == ["dequeued 8 != sent 7 + nolistener 1 + overrun 0 + nlerr 1"]


def test_batch_checks_compare_the_histogram_with_batches_and_dequeued():
    # batches of 1, 1, 3 and 200 messages: buckets 0, 0, 1 and the last (>= 128)
    good = {"batch_hist": [2, 1, 0, 0, 0, 0, 0, 1], "batches": 4, "batch_max": 200, "dequeued": 205}
    assert kabi.batch_problems(good) == []
    assert kabi.batch_problems({"batch_hist": [0] * 8, "batches": 0, "batch_max": 0, "dequeued": 0}) == []
    # bucket 0 lost (a histogram copied from bucket 1 on): its sum, and the bounds on dequeued
    lost = kabi.batch_problems(dict(good, batch_hist=[0, 1, 0, 0, 0, 0, 0, 1]))
    assert lost[0] == "batch histogram [0, 1, 0, 0, 0, 0, 0, 1] sums to 2, not batches 4" and len(lost) == 2
    assert kabi.batch_problems(dict(good, dequeued=131)) == [
        "dequeued 131 outside 132..205, what batches of histogram [2, 1, 0, 0, 0, 0, 0, 1] (largest 200) hold"]
    small = {"batch_hist": [2, 1, 0, 0, 0, 0, 0, 0], "batches": 3, "batch_max": 5, "dequeued": 5}
    assert kabi.batch_problems(small) == [
        "largest batch 5 is not in the highest bucket used of histogram [2, 1, 0, 0, 0, 0, 0, 0]"]
    assert kabi.batch_problems(dict(good, batches=5, batch_hist=[2, 1, 0, 0, 0, 0, 0, 2], batch_max=0)) != []


def test_counter_problems_name_the_total_or_the_cpu_that_disagrees():
    ledger = {"inserted": 10, "enqueued": 10, "drop_full": 0, "drop_nomem": 0, "dequeued": 10, "sent": 10,
              "drop_nolistener": 0, "drop_overrun": 0, "drop_nlerr": 0}
    hist = {**ledger, "batch_hist": [10, 0, 0, 0, 0, 0, 0, 0], "batches": 10, "batch_max": 1}
    idle = {**dict.fromkeys(ledger, 0), "batch_hist": [0] * 8, "batches": 0, "batch_max": 0}
    good = {"total": hist, "cpus": [{"cpu": 0, **hist}, {"cpu": 1, **idle}]}
    assert kabi.counter_problems(good) == {}
    broken = kabi.counter_problems(dict(good, cpus=[{"cpu": 0, **dict(hist, batch_hist=[0] * 8)}]))
    assert list(broken) == ["0"] and broken["0"][0].startswith("batch histogram")
    assert list(kabi.counter_problems(dict(good, total=dict(hist, sent=9)))) == ["total"]


# ------------------------------------------------------------------ bounds (issue 12)

#: The constants the "Bounds" table of docs/kmod.md must state.
BOUND_CONSTANTS = ("CNLAB_BURST_BYTES_MAX", "CNLAB_BENCH_CHUNK_MAX", "CNLAB_BENCH_CHUNK_BYTES_MAX",
                   "CNLAB_QBYTES_DEFAULT", "CNLAB_QBYTES_MIN", "CNLAB_QBYTES_MAX")


def doc_bounds(text: str) -> dict[str, int]:
    """Constant -> limit from the rows of the "### Bounds" table (| request | was | `CONST` | 1,234 | refusal |)."""
    import re

    section = text.split("### Bounds\n", 1)[1].split("\n### ", 1)[0]
    out = {}
    for m in re.finditer(r"^\|[^|]*\|[^|]*\| `(?P<name>CNLAB_\w+)` \| (?P<value>[\d,]+) \|", section, re.M):
        out[m["name"]] = int(m["value"].replace(",", ""))
    return out


def test_doc_bounds_reads_the_table_rows():
    text = ("### Bounds\n\n| a | b | `CNLAB_X` | 1,024 | -EINVAL |\n| a | b | (rule) | x | y |\n"
            "### Next\n| a | b | `CNLAB_Y` | 5 | z |\n")
    assert doc_bounds(text) == {"CNLAB_X": 1024}


def test_bounds_in_the_docs_are_the_abi_constants(c_abi):
    """Each limit docs/kmod.md "Bounds" states is the C header's value and kabi's, and the module parameter table
    says the same queue_bytes range and default."""
    text = DOCS_KMOD.read_text()
    stated = doc_bounds(text)
    assert set(BOUND_CONSTANTS) <= set(stated), f"not in the Bounds table: {set(BOUND_CONSTANTS) - set(stated)}"
    wrong = [f"{name}: docs {value}, C {c_abi['consts'][name]}, kabi {getattr(kabi, name)}"
             for name, value in stated.items() if not value == c_abi["consts"][name] == getattr(kabi, name)]
    assert not wrong, "\n".join(wrong)
    row = f"| `queue_bytes` | {kabi.CNLAB_QBYTES_DEFAULT} | "
    assert row in text and f"({kabi.CNLAB_QBYTES_MIN}..{kabi.CNLAB_QBYTES_MAX};" in text


def test_bounds_are_consistent():
    """A BENCH chunk fits the message limit's maximum; the byte limits allow at least one largest message."""
    assert kabi.CNLAB_BENCH_CHUNK_MAX <= kabi.CNLAB_QLIMIT_MAX
    assert kabi.CNLAB_BENCH_CHUNK_BYTES_MAX >= kabi.CNLAB_PAYLOAD_MAX
    assert kabi.CNLAB_QBYTES_MIN <= kabi.CNLAB_QBYTES_DEFAULT <= kabi.CNLAB_QBYTES_MAX
    assert kabi.CNLAB_QBYTES_MIN >= kabi.CN_MSG.size + kabi.CNLAB_PAYLOAD_MAX
    assert kabi.CNLAB_BURST_BYTES_MAX // kabi.CNLAB_PAYLOAD_MAX >= 1


def test_threads_sharing_a_client_each_get_their_own_reply():
    """The agent's fault threads and its event probes share one CtlClient: a reply must reach its asker."""
    import socket
    import threading
    import time

    ours, module = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    client = kabi.CtlClient(sock=ours, timeout=2.0)

    def answer():  # the "module": replies to each request after a pause, as a busy guest does
        while True:
            try:
                data = module.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            (m,) = kabi.parse_datagram(data)
            time.sleep(0.005)
            module.send(_fake_reply(kabi.CNLAB_MSG_ECHO, 0, kabi.ECHO.pack(user_ns=0, data_len=0), seq=m.seq))

    threading.Thread(target=answer, daemon=True).start()
    failures = []

    def ask():
        for _ in range(15):
            try:
                client.echo()
            except TimeoutError as exc:
                failures.append(str(exc))

    askers = [threading.Thread(target=ask, daemon=True) for _ in range(3)]
    for t in askers:
        t.start()
    for t in askers:  # a thread whose reply another one took waits for it in recv() (a blocking socket)
        t.join(timeout=30)
    stuck = sum(t.is_alive() for t in askers)
    module.close()
    client.close()
    assert (failures, stuck) == ([], 0)
