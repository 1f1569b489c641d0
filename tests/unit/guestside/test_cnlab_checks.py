"""cnlab_checks.py's --stop-on-failure, with the checks and the kernel's taint replaced; its output read back by
the mutation runner (:func:`lab.engine.mutation.checks_outcome`)."""

from __future__ import annotations

import contextlib
import json
import re
from types import SimpleNamespace

import pytest

from lab.engine.mutation import checks_outcome

from .guest_modules import load_guest_module


class FakeControl:
    """The module's control socket as far as the check after each check asks it: GEN_STATS of every generator
    (``states`` by id, idle otherwise; ``active`` by id), GEN_STOP (``stopped``), STATS of an empty CBUS."""

    def __init__(self, module):
        self.kabi = module.kabi
        self.states: dict[int, int] = {}
        self.active: dict[int, int] = {}
        self.stopped: list[int] = []

    def gen_stats(self, gen_id):
        state = self.states.get(gen_id, self.kabi.CNLAB_GEN_IDLE)
        return SimpleNamespace(ok=True, status=0, body={"state": state, "active": self.active.get(gen_id, 0)})

    def gen_stop(self, gen_id):
        self.stopped.append(gen_id)
        self.states[gen_id] = self.kabi.CNLAB_GEN_STOPPED
        return SimpleNamespace(ok=True, status=0)

    def stats(self):
        empty = dict.fromkeys(("inserted", "enqueued", "dequeued", "sent", "drop_full", "drop_nomem",
                               "drop_nolistener", "drop_overrun", "drop_nlerr", "queued"), 0)
        return SimpleNamespace(ok=True, status=0, body={"total": empty})


@pytest.fixture
def checks(monkeypatch):
    """The checks script with three fake checks: ``good``, ``bad`` (fails) and ``warns`` (taints the kernel);
    the order the checks ran in is ``module.ran``."""
    module = load_guest_module("cnlab_checks")
    module.ran = []
    module.taint = 0x3000  # O and E, as a loaded lab module leaves it

    def good(c):
        module.ran.append("good")
        module.report("good", True)

    def bad(c):
        module.ran.append("bad")
        module.report("bad", False, why="counted 3, expected 4")

    def warns(c):
        module.ran.append("warns")
        module.taint |= 1 << 9  # W
        module.report("warns", True)

    monkeypatch.setattr(module, "TESTS", {"good": good, "bad": bad, "warns": warns})
    monkeypatch.setattr(module, "read_taint", lambda: module.taint)
    module.control = FakeControl(module)
    monkeypatch.setattr(module.kabi, "CtlClient", lambda timeout: contextlib.nullcontext(module.control))
    monkeypatch.setattr(module, "RESULTS", [])
    return module


def _run(module, capsys, *argv):
    status = module.main(["--no-klog", *argv])
    return status, capsys.readouterr().out


def test_a_failed_check_stops_the_run_and_says_what_was_not_run(checks, capsys):
    status, out = _run(checks, capsys, "--stop-on-failure", "good", "bad", "good", "warns")
    assert status == 1 and checks.ran == ["good", "bad"]
    stopped = [json.loads(line) for line in out.splitlines() if '"stopped"' in line]
    assert stopped == [{"stopped": True, "after": "bad", "reason": "bad failed", "not_run": ["good", "warns"]}]
    failed, not_run = checks_outcome(out, ("good", "bad", "good", "warns"))
    assert not_run == ["good", "warns"]
    assert len(failed) == 1 and failed[0].startswith("bad: ") and "counted 3" in failed[0]


def test_a_new_taint_stops_the_run_although_the_check_passed(checks, capsys):
    status, out = _run(checks, capsys, "--stop-on-failure", "warns", "good")
    assert status == 0 and checks.ran == ["warns"]
    failed, not_run = checks_outcome(out, ("warns", "good"))
    assert not_run == ["good"]
    assert failed == ["stopped after warns: kernel taint 0x3000 -> 0x3200"]


def test_loading_taint_does_not_stop_and_without_the_flag_every_check_runs(checks, capsys):
    checks.taint = 0

    def loads_a_module(c):
        checks.ran.append("loads")
        checks.taint |= 0x3000
        checks.report("loads", True)

    checks.TESTS["loads"] = loads_a_module
    _run(checks, capsys, "--stop-on-failure", "loads", "good")
    assert checks.ran == ["loads", "good"]
    status, out = _run(checks, capsys, "bad", "warns", "good")
    assert status == 1 and checks.ran[2:] == ["bad", "warns", "good"] and '"stopped"' not in out
    failed, not_run = checks_outcome(out, ("bad", "warns", "good"))
    assert not_run == [] and len(failed) == 1 and failed[0].startswith("bad: ")


def test_a_check_that_printed_nothing_is_a_failure_unless_the_stop_skipped_it():
    text = json.dumps({"test": "echo", "ok": True}) + "\n" + json.dumps({"test": "echo", "ok": True, "timing": True})
    failed, not_run = checks_outcome(text + "\nTraceback (most recent call last):\n", ("echo", "balance"))
    assert failed == ["balance: no result"] and not_run == []


def test_the_taint_the_stop_allows_is_the_taint_the_console_check_allows(checks):
    from lab.guest.kcheck import ALLOWED_TAINT

    assert checks.LOADING_TAINT == ALLOWED_TAINT


def test_a_generator_a_check_left_running_fails_after_it_and_is_stopped_before_the_next(checks, capsys):
    def leaves_one(c):
        checks.ran.append("leaves")
        c.states[9] = checks.kabi.CNLAB_GEN_RUNNING
        checks.report("leaves", True)

    checks.TESTS["leaves"] = leaves_one
    status, out = _run(checks, capsys, "good", "leaves", "good")
    assert status == 1 and checks.ran == ["good", "leaves", "good"] and checks.control.stopped == [9]
    failed, not_run = checks_outcome(out, ("good", "leaves", "good"))
    assert not_run == [] and len(failed) == 1
    assert failed[0].startswith("leftovers: ") and '"after": "leaves"' in failed[0] and '"running": [9]' in failed[0]

    _run(checks, capsys, "--stop-on-failure", "leaves", "good")
    assert checks.ran[3:] == ["leaves"]


def test_an_idle_generator_claiming_instances_is_a_failure(checks, capsys):
    checks.control.active[4] = 1
    status, out = _run(checks, capsys, "good")
    failed, _ = checks_outcome(out, ("good",))
    assert status == 1 and len(failed) == 1 and '"gen_id": 4' in failed[0] and checks.control.stopped == []


def test_clean_checks_leave_no_leftovers_result(checks, capsys):
    status, out = _run(checks, capsys, "good", "warns")
    assert status == 0 and "leftovers" not in out


def test_a_readers_buffer_is_at_most_a_sixteenth_of_the_available_memory(checks, tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        2014000 kB\nMemFree:          900000 kB\nMemAvailable:    1100000 kB\n")
    assert checks.reader_buffer(meminfo=str(meminfo)) == 1100000 * 1024 // 16
    assert checks.reader_buffer(4 << 20, meminfo=str(meminfo)) == 4 << 20


SLABINFO = """slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables ...
kmemleak_object    1000   1000    256   10    1 : tunables    0    0    0 : slabdata    1    1      0
kmalloc-256         100    100    256    8    1 : tunables    0    0    0 : slabdata    1    1      0
kmalloc-128         100    100    128    8    1 : tunables    0    0    0 : slabdata    1    1      0
kmalloc-96          100    100     96   42    1 : tunables    0    0    0 : slabdata    1    1      0
dma-kmalloc-128       0      0    128   32    1 : tunables    0    0    0 : slabdata    0    0      0
"""


def test_an_events_footprint_is_its_kmalloc_cache_with_debug_metadata_and_kmemleaks_object(checks, tmp_path):
    slabinfo = tmp_path / "slabinfo"
    slabinfo.write_text(SLABINFO)
    page = checks.os.sysconf("SC_PAGE_SIZE")
    # 36 + 64 bytes land in kmalloc-128, whose slab holds 8 per page here (red zones, owner tracking)
    assert checks.event_footprint(64, str(slabinfo)) == page // 8 + page // 10
    slabinfo.write_text("\n".join(line for line in SLABINFO.splitlines() if "kmemleak" not in line))
    assert checks.event_footprint(64, str(slabinfo)) == page // 8
    assert checks.event_footprint(50, str(slabinfo)) == page // 42  # 86 bytes: kmalloc-96


def test_the_hotplug_queue_limit_keeps_full_queues_to_an_eighth_of_the_available_memory(checks, tmp_path):
    slabinfo, meminfo = tmp_path / "slabinfo", tmp_path / "meminfo"
    slabinfo.write_text(SLABINFO)
    cost = checks.event_footprint(64, str(slabinfo))
    meminfo.write_text("MemAvailable:    1200000 kB\n")
    room = checks.queue_room(2, 64, 4096, meminfo=str(meminfo), slabinfo=str(slabinfo))
    assert room == 1200000 * 1024 // 8 // (2 * cost) and 4096 < room < 1 << 18
    meminfo.write_text("MemAvailable:    90000000 kB\n")
    assert checks.queue_room(2, 64, 4096, meminfo=str(meminfo), slabinfo=str(slabinfo)) == 1 << 18
    meminfo.write_text("MemAvailable:    1000 kB\n")
    assert checks.queue_room(2, 64, 4096, meminfo=str(meminfo), slabinfo=str(slabinfo)) == 4096


def _cpu_entry(cpu, **values):
    entry = dict.fromkeys(("inserted", "sent", "drop_full", "drop_nomem", "drop_nolistener", "drop_overrun",
                           "drop_nlerr", "rejected", "queued", "kicks", "batches", "nl_msgs", "bundles",
                           "enqueued", "dequeued", "hwm", "batch_max"), 0)
    entry.update({"cpu": cpu, "online": 1, "batch_hist": [0, 0, 0], **values})
    return entry


def test_a_stats_total_that_is_not_the_sum_of_its_cpu_entries_is_named_field_by_field(checks):
    cpus = [_cpu_entry(0, inserted=5, sent=5, hwm=3, batch_hist=[1, 2, 0]),
            _cpu_entry(1, inserted=7, sent=7, hwm=9, batch_hist=[0, 1, 1])]
    total = _cpu_entry(2 ** 32 - 1, inserted=12, sent=12, hwm=9, online=2, batch_hist=[1, 3, 1])
    assert checks.total_mismatches({"cpus": cpus, "total": total}) == {}
    total.update(online=0, hwm=12, batch_hist=[1, 3, 0])   # a CPU's online not added; high-water marks summed
    assert checks.total_mismatches({"cpus": cpus, "total": total}) == {
        "online": (0, 2), "hwm": (12, 9), "batch_hist": ([1, 3, 0], [1, 3, 1])}


def _documented_parameters() -> dict[str, tuple[str, str]]:
    """docs/kmod.md's "Module parameters" table: name -> (default, meaning)."""
    from lab.image.module import kmod_dir

    table = (kmod_dir().parent / "docs" / "kmod.md").read_text().split("| Parameter | Default | Meaning |")[1]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("| `"):
            break
        name, default, meaning = (cell.strip() for cell in line.split("|")[1:4])
        rows[name.strip("`")] = (default, meaning)
    return rows


def test_the_defaults_check_knows_every_parameter_with_the_default_the_docs_give(checks):
    from lab.image.module import kmod_dir

    shown = {"off": "N", "on": "Y"}
    assert {k: shown.get(v, v) for k, (v, _) in _documented_parameters().items()} == checks.PARAM_DEFAULTS
    declared = re.findall(r"module_param(?:_named)?\((\w+)", "".join(p.read_text() for p in kmod_dir().glob("*.c")))
    assert set(declared) == set(checks.PARAM_DEFAULTS)


def test_the_param_bounds_check_knows_every_range_the_docs_give(checks):
    documented = {}
    for name, (_default, meaning) in _documented_parameters().items():
        if m := re.search(r"\((-?\d+)\.\.(-?\d+)", meaning):
            documented[name] = (int(m[1]), int(m[2]))
        elif m := re.search(r"at least (\d+)", meaning):
            documented[name] = (int(m[1]), None)
    assert documented.pop("fail_init") == (1, 6)  # a test hook: initfail fails each step
    assert documented == checks.PARAM_RANGES
    kabi = checks.kabi
    assert checks.PARAM_RANGES["queue_limit"] == (1, kabi.CNLAB_QLIMIT_MAX)
    assert checks.PARAM_RANGES["queue_bytes"] == (kabi.CNLAB_QBYTES_MIN, kabi.CNLAB_QBYTES_MAX)
    assert checks.PARAM_RANGES["bundle_bytes"][1] == kabi.CONNECTOR_MAX_MSG_SIZE - kabi.CN_MSG.size


def test_each_range_is_loaded_at_its_ends_and_one_past_them_where_the_parser_lets_the_module_judge(checks):
    assert checks.param_bound_values("pool_slots") == ([0, 65536], [65537])  # -1 is not a uint
    assert checks.param_bound_values("drain_nice") == ([-20, 19], [-21, 20])
    assert checks.param_bound_values("drain_budget") == ([1], [0])


def test_a_moved_default_or_an_undocumented_parameter_fails_the_defaults_check(checks, tmp_path, capsys):
    params = tmp_path / "parameters"
    params.mkdir()
    for name, value in checks.PARAM_DEFAULTS.items():
        (params / name).write_text(value + "\n")
        (params / name).chmod(checks.PARAM_MODES[name])
    checks.t_defaults(None, str(params))
    (params / "bundle_bytes").write_text("8191\n")
    (params / "new_knob").write_text("1\n")
    (params / "pool_slots").chmod(0o644)
    (params / "debug_warn").chmod(0o444)
    checks.t_defaults(None, str(params))
    good, bad = checks.RESULTS[-2:]
    assert good["ok"] and not bad["ok"]
    assert bad["wrong"] == {"bundle_bytes": "8191"} and bad["undocumented"] == ["new_knob"]
    assert bad["wrong_modes"] == {"pool_slots": "0o644", "debug_warn": "0o444"}


def test_the_defaults_check_knows_each_parameter_files_documented_mode(checks):
    # the table names 0644 where a file is writable; the others are read-only (0444), as the text under it says
    documented = {k: 0o644 if "0644" in meaning else 0o444 for k, (_d, meaning) in _documented_parameters().items()}
    assert documented == checks.PARAM_MODES


def test_a_message_stamped_before_its_slot_is_early_by_the_nanoseconds_it_lacked(checks):
    start, rate = 1_000, 3  # slots at 0, 333,333,334 and 666,666,667 ns (rounded up) after the start
    on_time = [(0, start), (1, start + 333_333_334), (2, start + 700_000_000)]
    assert checks.early_messages(on_time, start, rate) == []
    # one message ahead of a rate limiter: the second goes out with the first
    assert checks.early_messages([(0, start), (1, start + 5), (2, start + 666_666_666)], start, rate) == [
        (1, 333_333_329), (2, 1)]


@pytest.mark.parametrize(("injected", "status", "body", "outcome"), [
    (True, -12, {"status": -12, "cbus_calls": 0, "direct_calls": 0}, "enomem"),
    (True, 0, {"status": 0, "cbus_calls": 64, "direct_calls": 64}, "elsewhere"),
    (False, 0, {"status": 0, "cbus_calls": 64, "direct_calls": 64}, "missed"),
    # the module that returns 0 when its buffer cannot be allocated: success, nothing measured
    (True, 0, {"status": 0, "cbus_calls": 0, "direct_calls": 0}, "answered OK (body 0) with 0 calls measured"),
    (True, -12, {"status": 0, "cbus_calls": 0, "direct_calls": 0}, "answered ENOMEM (body 0) with 0 calls measured"),
])
def test_a_bench_round_is_judged_by_its_reply_and_whether_a_failure_was_injected(checks, injected, status, body,
                                                                                 outcome):
    reply = SimpleNamespace(status=status, body=body, raw=b"", error_name="ENOMEM" if status else "")
    assert checks.bench_nomem_outcome(injected, reply) == outcome
    assert checks.bench_nomem_outcome(injected, None) == "no reply"


def _message(checks, seq, length=48, cbus=True, **wrong):
    """One generated connector message (cn_msg + event + filler) as docs/kmod.md describes it, or with the
    fields in ``wrong`` changed."""
    kabi = checks.kabi
    cn = {"idx": checks.GEN_IDX, "val": checks.GEN_VAL, "seq": seq & 0xFFFFFFFF, "ack": 0, "len": length, "flags": 0}
    cn.update({k: v for k, v in wrong.items() if k in cn})
    cn["seq"] = wrong.get("cn_seq", cn["seq"])
    event = kabi.EVENT.pack(gen_id=10, cpu=1, seq=seq, ts_ns=5, len=length,
                            flags=wrong.get("ev_flags", kabi.CNLAB_EV_F_CBUS if cbus else 0))
    filler = bytes([wrong.get("fill", seq & 0xFF)]) * (length - len(event))
    return kabi.CN_MSG.pack(**cn) + event + filler


def _datagram(checks, *cn_messages):
    kabi, out = checks.kabi, b""
    for m in cn_messages:
        body = kabi.NLMSGHDR.pack(len=kabi.NLMSG_HDRLEN + len(m), type=3, flags=0, seq=0, pid=0) + m
        out += body + b"\0" * (-len(body) % 4)
    return bytearray(out)


def _bundle(checks, *inner, **wrong):
    kabi = checks.kabi
    first_seq = kabi.EVENT_S.unpack_from(inner[0], kabi.CN_MSG.size)[2]
    cn = {"idx": checks.GEN_IDX, "val": checks.GEN_VAL, "seq": first_seq, "ack": 0, "len": sum(map(len, inner)),
          "flags": kabi.CNLAB_CN_F_BUNDLE}
    cn.update(wrong)
    return kabi.CN_MSG.pack(**cn) + b"".join(inner)


def test_messages_as_the_docs_describe_them_have_no_problem_on_any_path(checks):
    plain = _datagram(checks, _message(checks, 7), _message(checks, 2**32 + 8, length=200))
    assert checks.datagram_problems(plain, len(plain), 10, True) == ({}, 2)
    direct = _datagram(checks, _message(checks, 3, cbus=False))
    assert checks.datagram_problems(direct, len(direct), 10, False) == ({}, 1)
    bundled = _datagram(checks, _bundle(checks, _message(checks, 4), _message(checks, 5, length=32)))
    assert checks.datagram_problems(bundled, len(bundled), 10, True) == ({}, 2)


@pytest.mark.parametrize(("wrong", "problem"), [({"ack": 1}, "ack"), ({"flags": 4}, "cn flags"),
                                                ({"cn_seq": 6}, "cn seq"), ({"fill": 0}, "filler"),
                                                ({"ev_flags": 0}, "event flags"), ({"idx": 9}, "id")])
def test_each_field_off_the_docs_is_named(checks, wrong, problem):
    dgram = _datagram(checks, _message(checks, 7), _message(checks, 8, **wrong))
    assert checks.datagram_problems(dgram, len(dgram), 10, True) == ({problem: 1}, 2)
    inside = _datagram(checks, _bundle(checks, _message(checks, 7), _message(checks, 8, **wrong)))
    assert checks.datagram_problems(inside, len(inside), 10, True)[0] == {problem: 1}


def test_a_bundle_header_off_the_docs_is_named(checks):
    for wrong in ({"ack": 1}, {"seq": 5}, {"idx": 9}):
        dgram = _datagram(checks, _bundle(checks, _message(checks, 4), _message(checks, 5), **wrong))
        assert checks.datagram_problems(dgram, len(dgram), 10, True) == ({"bundle header": 1}, 2), wrong


def test_went_back_names_each_growing_counter_that_is_lower_than_before(checks):
    before = dict.fromkeys(checks.GROWING, 10) | {"hwm": 9, "queued": 4, "batch_max": 3}
    after = dict(before, inserted=11, sent=9, drop_nlerr=2, hwm=0, queued=0, batch_max=1)
    # hwm is reset by STATS' flag and queued is derived: they may go down
    assert checks.went_back(before, after) == ["sent 10 -> 9", "drop_nlerr 10 -> 2"]
    assert checks.went_back(before, before) == []
