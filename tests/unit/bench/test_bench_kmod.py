"""lab.bench.kmod: goal verdicts and the table from a guest's JSON (no guest)."""

from __future__ import annotations

from lab.bench.kmod import BENCH_CMDLINE, _print_runs, _print_table, burst_for_ratio, goals_met, summarise_kmod
from lab.guest.qemu_argv import BASE_CMDLINE

RAW = {
    "insert": {"chunk": 128, "chunks": 200, "cbus_insert_ns": 200.0, "direct_send_ns": 4400.0, "ratio": 22.0,
               "ratio_mean": 21.0, "cbus_mean_ns": 210.0, "direct_mean_ns": 4410.0,
               "cbus_p10_p90_ns": [190, 300], "direct_p10_p90_ns": [4000, 6000],
               "first_call_ns": {"cbus": 7321.0, "direct": 30000.0},
               "further_calls_ns": {"cbus": 140.5, "direct": 4300.0}, "ratio_further_calls": 30.6},
    "insert_big_chunk": {"chunk": 1024, "chunks": 25, "cbus_insert_ns": 190.0, "direct_send_ns": 3990.0,
                         "ratio": 21.0},
    "rate": {"direct": {"msgs_per_s": 40000, "generated": 10, "received": 10, "datagrams": 10},
             "cbus": {"msgs_per_s": 50000, "generated": 10, "received": 10, "datagrams": 10},
             "cbus_bundle": {"msgs_per_s": 160000, "generated": 10, "received": 10, "datagrams": 1}},
    "latency": {"rate": 2000, "count": 10000, "rounds": 5, "warmup_rounds": 1, "reader": "block", "reader_cpu": 0,
                "generator_cpu": 0, "clocksource": "tsc",
                "direct": {"p50_us": 44.5, "p90_us": 70.0, "p99_us": 155.3, "p99.9_us": 351.5, "max_us": 426.8,
                           "round_p99_us": [177.7, 136.1, 132.0, 98.4, 214.0], "warmup_p99_us": [1866.0]},
                "cbus": {"p50_us": 62.1, "p90_us": 99.3, "p99_us": 623.7, "p99.9_us": 900.0, "max_us": 1000.0,
                         "round_p99_us": [142.4, 129.4, 1250.2, 117.6, 314.9], "warmup_p99_us": [2316.0]}},
}


def test_goals_come_from_the_run():
    s = summarise_kmod(RAW)
    assert s["goals"]["insert>=20x_per_call"] and s["goals"]["insert>=20x_1024_call_loop"]
    assert s["goals"]["bundle_rate>=1.5x_direct"]
    assert not s["goals"]["cbus_p99<=500us"]  # 623.7 us in this input
    assert s["beside_goals"] == {"insert>=20x_128_call_burst": True, "plain_cbus_rate>=1.5x_direct": False}
    assert s["latency_us"]["direct"]["p99"] == 155.3
    raw = {**RAW, "latency": {**RAW["latency"], "cbus": {**RAW["latency"]["cbus"], "p99_us": 499.0}}}
    assert summarise_kmod(raw)["goals"]["cbus_p99<=500us"]
    raw = {**RAW, "insert_big_chunk": {**RAW["insert_big_chunk"], "ratio": 19.9}}
    assert not summarise_kmod(raw)["goals"]["insert>=20x_1024_call_loop"]


def test_the_burst_that_pays_for_its_kick():
    # 20 * 7321 - 30000 = 116420 over 4300 - 20 * 140.5 = 1490: 78.1, so 1 + 79 calls
    assert burst_for_ratio({"cbus": 7321.0, "direct": 30000.0}, {"cbus": 140.5, "direct": 4300.0}, 20) == 80
    # a first call cheaper than 1/20 of the direct one: every burst, even of one call
    assert burst_for_ratio({"cbus": 100.0, "direct": 30000.0}, {"cbus": 140.5, "direct": 4300.0}, 20) == 1
    # calls after the first below 20x: no burst is long enough
    assert burst_for_ratio({"cbus": 7321.0, "direct": 30000.0}, {"cbus": 300.0, "direct": 4300.0}, 20) is None
    assert burst_for_ratio({}, {}, 20) is None


def test_table_shows_reader_placement_clocksource_and_rounds(capsys):
    _print_table({"kernel": "k", "cpus": 2, "accel": "tcg"}, RAW, summarise_kmod(RAW))
    out = capsys.readouterr().out
    assert "2,000 msgs/s per path" in out and "5 alternating rounds" in out
    assert "reader blocks on CPU 0" in out and "clocksource tsc" in out
    assert "1,250" in out  # a round's p99 is printed, not hidden
    assert "cbus_p99<=500us NOT met" in out
    # The kick is shown apart from the inserts that follow it
    assert "a burst's first call: cbus_insert 7,321 ns (it wakes the drain thread), direct 30,000 ns" in out
    assert "each call after a burst's first: cbus_insert 140.5 ns, direct 4,300.0 ns: 30.6x" in out
    assert "loops of 1024 calls, the kick included: cbus_insert 190.0 ns, direct 3,990.0 ns (medians): 21.0x" in out
    assert "a burst reaches 20x (its kick included) from 80 calls on" in out
    assert "beside the goals: insert>=20x_128_call_burst yes, plain_cbus_rate>=1.5x_direct no" in out


def test_bench_guest_uses_the_tsc():
    assert "tsc=reliable" in BENCH_CMDLINE
    assert "tsc=reliable" not in BASE_CMDLINE  # no clocksource watchdog in ordinary guests: see qemu_argv


def test_runs_side_by_side_count_where_each_goal_held(capsys):
    slow = {**RAW, "insert": {**RAW["insert"], "ratio": 17.0}}
    runs = [{"summary": summarise_kmod(RAW)}, {"summary": summarise_kmod(slow)}]
    held = goals_met(runs)
    assert held["insert>=20x_per_call"] == 2 and held["insert>=20x_128_call_burst"] == 1
    assert held["cbus_p99<=500us"] == 0
    _print_runs(runs)
    out = capsys.readouterr().out
    assert "2 runs, one fresh guest each" in out
    assert "insert>=20x_128_call_burst 1/2" in out and "cbus_p99<=500us 0/2" in out
    assert "17.0x" in out and "22.0x" in out


def test_warm_up_rounds_are_reported_apart_from_the_measured_ones(capsys):
    s = summarise_kmod(RAW)
    assert s["latency_warmup_p99_us"] == {"direct": [1866.0], "cbus": [2316.0]}
    assert s["latency_round_p99_us"]["cbus"] == [142.4, 129.4, 1250.2, 117.6, 314.9]
    assert s["latency_us"]["cbus"]["p99"] == 623.7  # the warm-up round's 2,316 us is not in it
    _print_table({"kernel": "k", "cpus": 2, "accel": "tcg"}, RAW, s)
    out = capsys.readouterr().out
    assert "1 warm-up round(s) of the same size, discarded" in out and "direct 1,866, cbus 2,316" in out


def _checkers(python: int, native: int, reconciled: bool = True) -> dict:
    def consumer(rate: int) -> dict:
        return {"received": 60000, "seconds": round(60000 / rate, 3), "msgs_per_s": rate,
                "accounting": {"lost": 0, "counted": 0, "reconciled": reconciled}}

    return {"generator": {"count": 60000, "path": "cbus", "size_min": 32},
            "runs": [{"gen_msgs_per_s": 120000, "consumers": {"python": consumer(python)}},
                     {"gen_msgs_per_s": 120000, "consumers": {"native": consumer(native)}}]}


def test_the_native_checker_goal_is_judged_on_the_rates_from_a_backlog(capsys):
    goal = "native_checker>=10x_python_no_unaccounted_loss"
    # reading as the generator sends, the native checker shows the generator's rate: 9.2x; from a backlog, 25x
    raw = {**RAW, "checkers": _checkers(13000, 120000), "checkers_backlog": _checkers(12000, 300000)}
    s = summarise_kmod(raw)
    assert s["native_checker_ratio"] == 9.23 and s["native_checker_backlog_ratio"] == 25.0 and s["goals"][goal]
    _print_table({"kernel": "k", "cpus": 2, "accel": "tcg"}, raw, s)
    printed = capsys.readouterr().out
    assert "native / python = 9.2x (a checker that keeps up" in printed
    assert "native / python = 25.0x (each checker's own rate: the goal's)" in printed
    assert not summarise_kmod({**raw, "checkers_backlog": _checkers(12000, 100000)})["goals"][goal]
    # unaccounted loss in either measurement fails the goal, whatever the rates
    assert not summarise_kmod({**raw, "checkers": _checkers(13000, 120000, reconciled=False)})["goals"][goal]
    # a run from before the backlog measurement is judged on the live one
    assert not summarise_kmod({**RAW, "checkers": _checkers(13000, 120000)})["goals"][goal]
