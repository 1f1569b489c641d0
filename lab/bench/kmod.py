"""``cnlab bench kmod``: cbus_insert against a direct send, rates and latency, in one guest.

One guest, one run (``lab/guestside/kmod_timing.py`` does the measuring):

1. the in-kernel BENCH request: ns per ``cbus_insert`` against ns per direct
   ``cn_netlink_send`` to a group with one listener;
2. delivered msgs/s to one reader for direct, CBUS and CBUS bundles (a
   kthread generator on CPU 0 as fast as possible, the reader on another CPU);
3. enqueue-to-userspace latency percentiles at a moderate rate, both paths,
   over the rounds after a discarded warm-up round per path;
4. the checkers' rates, one at a time in the same guest
   (``lab/guestside/consumer_rate.py``): the Python checker (``consume.py``)
   and the native one (``cnlab-consume``) under the same flood, with their
   loss accounting; once reading as the generator sends (a checker that
   keeps up shows the generator's rate), once from a backlog of the whole
   flood queued while it was stopped (its own rate: what it sustains, and
   what the goal is judged on).

Every run boots its guest cold: the guest calibrates its TSC at boot
(``tsc=reliable``), and runs restored from one saved state would all share
that one calibration.

Prints a table with the ratios against the issue's goals and writes JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from cnlab_plugins.guestside import HERE as PLUGIN_GUESTSIDE

from lab.errors import GuestError
from lab.guest.files import GUEST_LIB, install_guest_programs
from lab.guest.labsetup import Lab
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape

__all__ = ["run_kmod_bench", "summarise_kmod", "goals_met", "burst_for_ratio", "GOALS"]


#: Issue 3's goals, and issue 14's for the native checker.
GOALS = {"insert_ratio": 20.0, "bundle_rate_ratio": 1.5, "p99_us": 500.0, "native_checker_ratio": 10.0}
#: The native checker, copied into every guest by its init.
NATIVE_CHECKER = "/run/cnlab/bin/cnlab-consume"
#: The flood both checkers take, one at a time: CBUS from a kthread on CPU 0 as fast as it can, one
#: message per datagram (what scenarios send), into a buffer that holds all of it (so the rate is the
#: checker's, and loss is zero); the group is the benchmark's own.
CHECKER_FLOOD = {"idx": 0x22, "val": 1, "group": 6, "count": 60000, "duration_ns": 0, "cpu_mask": 1, "rate": 0,
                 "size_min": 32, "size_max": 32, "context": "kthread", "path": "cbus", "flags": 0, "burst": 256}
CHECKER_RCVBUF = 64 << 20


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return round(a / b, 2)


def burst_for_ratio(first: dict, further: dict, goal: float) -> int | None:
    """The shortest burst of calls (kick included) whose cost ratio reaches ``goal``, from the medians.

    A burst of ``n`` calls costs ``first + (n - 1) * further`` on each path
    (``first``: the burst's first call, for CBUS the one that wakes the drain
    thread).  None when even the calls after the first stay below ``goal``.
    """
    try:
        wc, wd, c, d = first["cbus"], first["direct"], further["cbus"], further["direct"]
    except (KeyError, TypeError):
        return None
    if not c or d <= goal * c:
        return None
    return 1 + max(0, math.ceil((goal * wc - wd) / (d - goal * c)))


def summarise_kmod(raw: dict) -> dict:
    """The headline figures and goal verdicts from the guest's JSON.

    The insert goal is judged per call in a tight loop: the calls after a
    burst's first (steady state) and whole 1024-call loops with their one
    kick must each be at least 20x cheaper than direct sends.  The 128-call
    bursts after 1 ms idle, the kick's own cost and the burst length from
    which the kick is paid for are reported beside it.
    """
    ins = raw.get("insert", {})
    big = raw.get("insert_big_chunk", {})
    rate = raw.get("rate", {})
    lat = raw.get("latency", {})
    direct_rate = rate.get("direct", {}).get("msgs_per_s")
    summary = {
        "cbus_insert_ns": ins.get("cbus_insert_ns"),
        "direct_send_ns": ins.get("direct_send_ns"),
        "insert_ratio": ins.get("ratio"),
        "insert_ratio_mean": ins.get("ratio_mean"),
        "insert_ratio_long_run": raw.get("insert_long_run", {}).get("ratio"),
        "insert_ratio_big_chunk": big.get("ratio"),
        "insert_ratio_without_kick": ins.get("ratio_further_calls"),
        "first_call_ns": ins.get("first_call_ns"),
        "burst_for_20x": burst_for_ratio(ins.get("first_call_ns") or {}, ins.get("further_calls_ns") or {},
                                         GOALS["insert_ratio"]),
        "rate_msgs_per_s": {k: v.get("msgs_per_s") for k, v in rate.items()},
        "rate_ratio_vs_direct": {k: _ratio(v.get("msgs_per_s"), direct_rate) for k, v in rate.items()},
        "latency_rate": lat.get("rate"),
        "latency_us": {k: {p: v.get(f"{p}_us") for p in ("p50", "p99", "p99.9")}
                       for k, v in lat.items() if isinstance(v, dict)},
        # each measured round's p99, and the discarded warm-up rounds' (not in the percentiles above)
        "latency_round_p99_us": {k: v.get("round_p99_us") for k, v in lat.items() if isinstance(v, dict)},
        "latency_warmup_p99_us": {k: v.get("warmup_p99_us") for k, v in lat.items() if isinstance(v, dict)},
    }
    def checker_rates(key: str) -> tuple[dict, dict, float | None]:
        """Each checker's msgs/s and whether its loss reconciled, in the run of ``key``; native / python."""
        found = {name: c for run in (raw.get(key) or {}).get("runs", ()) for name, c in run["consumers"].items()}
        rates = {name: c.get("msgs_per_s") for name, c in found.items()}
        reconciled = {name: (c.get("accounting") or {}).get("reconciled") for name, c in found.items()}
        return rates, reconciled, _ratio(rates.get("native"), rates.get("python"))

    (summary["checker_msgs_per_s"], summary["checker_reconciled"],
     summary["native_checker_ratio"]) = checker_rates("checkers")
    (summary["checker_backlog_msgs_per_s"], summary["checker_backlog_reconciled"],
     summary["native_checker_backlog_ratio"]) = checker_rates("checkers_backlog")
    p99_cbus = summary["latency_us"].get("cbus", {}).get("p99")
    goal = GOALS["insert_ratio"]
    summary["goals"] = {
        "insert>=20x_per_call": (summary["insert_ratio_without_kick"] or 0) >= goal,
        f"insert>=20x_{big.get('chunk', 1024)}_call_loop": (summary["insert_ratio_big_chunk"] or 0) >= goal,
        "bundle_rate>=1.5x_direct": (summary["rate_ratio_vs_direct"].get("cbus_bundle") or 0)
        >= GOALS["bundle_rate_ratio"],
        "cbus_p99<=500us": p99_cbus is not None and p99_cbus <= GOALS["p99_us"],
    }
    if summary["checker_backlog_msgs_per_s"]:  # the checkers' own rates (older runs: the live flood's)
        reconciled = [*summary["checker_reconciled"].values(), *summary["checker_backlog_reconciled"].values()]
        summary["goals"]["native_checker>=10x_python_no_unaccounted_loss"] = (
            (summary["native_checker_backlog_ratio"] or 0) >= GOALS["native_checker_ratio"] and all(reconciled))
    elif summary["checker_msgs_per_s"]:
        summary["goals"]["native_checker>=10x_python_no_unaccounted_loss"] = (
            (summary["native_checker_ratio"] or 0) >= GOALS["native_checker_ratio"]
            and all(summary["checker_reconciled"].values()))
    summary["beside_goals"] = {
        f"insert>=20x_{ins.get('chunk', 128)}_call_burst": (summary["insert_ratio"] or 0) >= goal,
        "plain_cbus_rate>=1.5x_direct": (summary["rate_ratio_vs_direct"].get("cbus") or 0)
        >= GOALS["bundle_rate_ratio"],
    }
    return summary


def _fmt(v: object, spec: str = ",.0f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float | int):
        return format(v, spec)
    return str(v)


def _pair_line(label: str, rec: dict, stat: str) -> str:
    """One line of ns per call for both paths and their ratio."""
    return (f"  {label}: cbus_insert {_fmt(rec['cbus_insert_ns'], ',.1f')} ns, direct "
            f"{_fmt(rec['direct_send_ns'], ',.1f')} ns ({stat}): {_fmt(rec.get('ratio'), '.1f')}x")


def _print_table(meta: dict, raw: dict, s: dict) -> None:
    print(f"cnlab bench kmod: kernel {meta['kernel']}, {meta['cpus']} vCPUs, accelerator {meta['accel']}")
    ins = raw.get("insert", {})
    first, further = ins.get("first_call_ns") or {}, ins.get("further_calls_ns") or {}
    print(f"\nper call, in-kernel loops with preemption off (32-byte payload, one listener; medians of "
          f"{ins.get('chunks')} bursts of {ins.get('chunk')} calls, each after 1 ms idle)")
    if first and further:
        print(f"  each call after a burst's first: cbus_insert {_fmt(further.get('cbus'), ',.1f')} ns, direct "
              f"{_fmt(further.get('direct'), ',.1f')} ns: {_fmt(ins.get('ratio_further_calls'), '.1f')}x")
        print(f"  a burst's first call: cbus_insert {_fmt(first.get('cbus'), ',.0f')} ns (it wakes the drain "
              f"thread), direct {_fmt(first.get('direct'), ',.0f')} ns")
    big = raw.get("insert_big_chunk")
    if big and "cbus_insert_ns" in big:
        print(_pair_line(f"loops of {big['chunk']} calls, the kick included", big, "medians"))
    print(f"  bursts of {ins.get('chunk')} calls, the kick included:")
    print(f"  {'':26}{'median ns':>10}{'mean ns':>10}{'p10..p90 ns':>20}")
    for label, key, mean_key, spread in (("cbus_insert", "cbus_insert_ns", "cbus_mean_ns", "cbus_p10_p90_ns"),
                                         ("cn_netlink_send (direct)", "direct_send_ns", "direct_mean_ns",
                                          "direct_p10_p90_ns")):
        lo, hi = (ins.get(spread) or [None, None])
        print(f"  {label:26}{_fmt(ins.get(key), ',.1f'):>10}{_fmt(ins.get(mean_key), ',.1f'):>10}"
              f"{_fmt(lo, ',.0f') + '..' + _fmt(hi, ',.0f'):>20}")
    print(f"  direct / cbus = {_fmt(ins.get('ratio'), '.1f')}x by medians, {_fmt(ins.get('ratio_mean'), '.1f')}x by "
          f"means")
    burst = s.get("burst_for_20x")
    print(f"  from these medians, a burst reaches {GOALS['insert_ratio']:.0f}x (its kick included) from "
          f"{_fmt(burst, ',d')} calls on" if burst else
          f"  from these medians, no burst reaches {GOALS['insert_ratio']:.0f}x")
    long = raw.get("insert_long_run")
    if long and "cbus_insert_ns" in long:
        print(_pair_line(f"one request of {_fmt(long['iterations'])} calls in bursts of {long['chunk']}", long,
                         "means"))
    rate = raw.get("rate", {})
    print("\nend to end, one reader, generator as fast as possible")
    print(f"  {'path':14}{'generated':>10}{'received':>10}{'dropped':>9}{'datagrams':>10}{'msgs/s':>10}{'x direct':>9}")
    for name, r in rate.items():
        print(f"  {name:14}{_fmt(r.get('generated')):>10}{_fmt(r.get('received')):>10}"
              f"{_fmt(r.get('generated', 0) - r.get('received', 0)):>9}{_fmt(r.get('datagrams')):>10}"
              f"{_fmt(r.get('msgs_per_s')):>10}{_fmt(s['rate_ratio_vs_direct'].get(name), '.2f'):>9}")
    lat = raw.get("latency", {})
    print(f"\nenqueue to userspace latency at {_fmt(lat.get('rate'))} msgs/s per path ({_fmt(lat.get('count'))} msgs "
          f"each, {_fmt(lat.get('rounds'))} alternating rounds), kthread generator on CPU {lat.get('generator_cpu')}, "
          f"reader {lat.get('reader')}s on CPU {lat.get('reader_cpu')}, clocksource {lat.get('clocksource')}; us")
    if lat.get("warmup_rounds"):
        print(f"  each path first ran {lat['warmup_rounds']} warm-up round(s) of the same size, discarded (under TCG a "
              f"path's first round pays for translating its code); their p99: " + ", ".join(
                  f"{name} {' '.join(_fmt(v, ',.0f') for v in lat.get(name, {}).get('warmup_p99_us', []))}"
                  for name in ("direct", "cbus")))
    print(f"  {'path':10}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}   p99 of each measured round")
    for name in ("direct", "cbus"):
        r = lat.get(name)
        if r:
            print(f"  {name:10}" + "".join(f"{_fmt(r.get(k), ',.1f'):>9}" for k in
                                            ("p50_us", "p90_us", "p99_us", "p99.9_us", "max_us"))
                  + "   " + " ".join(_fmt(v, ",.0f") for v in r.get("round_p99_us", [])))
    for key, how, ratio_key, said in (
            ("checkers", "reading as the generator sends", "native_checker_ratio",
             "a checker that keeps up with the generator shows the generator's rate"),
            ("checkers_backlog", "from a backlog: the flood queued while each was stopped, then read",
             "native_checker_backlog_ratio", "each checker's own rate: the goal's")):
        checkers = raw.get(key)
        if not checkers:
            continue
        flood = checkers["generator"]
        print(f"\ncheckers, one at a time in this guest, {how}: a flood of {_fmt(flood['count'])} messages "
              f"({flood['path']}, {flood['size_min']}-byte payload, one per datagram, kthread on CPU 0), "
              f"{CHECKER_RCVBUF >> 20} MiB receive buffer")
        print(f"  {'checker':10}{'received':>10}{'seconds':>9}{'msgs/s':>10}{'lost':>8}{'counted':>9}"
              f"  generator msgs/s")
        for run in checkers["runs"]:
            for name, c in run["consumers"].items():
                acc = c.get("accounting") or {}
                print(f"  {name:10}{_fmt(c.get('received')):>10}{_fmt(c.get('seconds'), '.2f'):>9}"
                      f"{_fmt(c.get('msgs_per_s')):>10}{_fmt(acc.get('lost')):>8}{_fmt(acc.get('counted')):>9}"
                      f"  {_fmt(run.get('gen_msgs_per_s'))}" + ("" if acc.get("reconciled") else "  NOT RECONCILED"))
        print(f"  native / python = {_fmt(s.get(ratio_key), '.1f')}x ({said})")
    print("\ngoals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in s["goals"].items()))
    print("beside the goals: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in s["beside_goals"].items()))


#: Guest kernel arguments.  Under TCG the kernel does not trust the TSC and
#: clocks on the emulated HPET: every ktime_get_ns() (the message's timestamp)
#: and every clock_gettime() (no vDSO for HPET: a system call) is then an MMIO
#: exit that QEMU serves under its global lock, which dominates the latency
#: figures.  TCG's TSC follows the host's invariant TSC, but its boot-time
#: calibration can be far off on a loaded host and tsc=reliable turns off the
#: watchdog that would notice: so the run measures the guest's clock against
#: the host's and says so when they disagree (GUEST_CLOCK_TOLERANCE).
BENCH_CMDLINE = ("tsc=reliable",)
GUEST_CLOCK_TOLERANCE = 0.02


def _guest_uptime(guest: Guest) -> float:
    return float(guest.run(["cat", "/proc/uptime"], check=True).text.split()[0])


def _measure_once(lab: Lab, shape: GuestShape) -> dict:
    """Boot a fresh guest, run the guest side, print its table; the run's meta, summary and raw figures."""
    spec = dataclasses.replace(lab.guest_spec(shape, name="bench-kmod", cmdline=BENCH_CMDLINE), snapshots=None)
    with Guest(spec) as guest:
        # consume.py (a plugin's guest program) in the same copy as the lab's: the checkers' runs use it
        lib = install_guest_programs(guest, extra=[(PLUGIN_GUESTSIDE / "consume.py", f"{GUEST_LIB}/consume.py",
                                                    0o755)])
        uptime_before, host_before = _guest_uptime(guest), time.monotonic()
        result = guest.run(["python3", f"{lib}/kmod_timing.py"], timeout=900)
        clock_rate = (_guest_uptime(guest) - uptime_before) / (time.monotonic() - host_before)
        checkers = _checker_rates(guest, lib, backlog=False) if result.ok else None
        backlog = _checker_rates(guest, lib, backlog=True) if result.ok else None
        taint = guest.tainted()
    if not result.ok:
        raise GuestError(f"kmod benchmark failed in the guest (exit {result.exit_status})",
                         result.stderr.decode(errors="replace")[-3000:])
    raw = json.loads(result.text.strip().splitlines()[-1])
    if checkers is not None:
        raw["checkers"], raw["checkers_backlog"] = checkers, backlog
    meta = {"kernel": spec.image.kernel.release, "accel": spec.accel.name, "cpus": shape.cpus,
            "guest_taint": taint,
            "guest_clock_rate": round(clock_rate, 4),
            "guest_clock_ok": abs(clock_rate - 1.0) <= GUEST_CLOCK_TOLERANCE}
    summary = summarise_kmod(raw)
    _print_table(meta, raw, summary)
    if not meta["guest_clock_ok"]:
        print(f"WARNING: the guest's clock ran at {clock_rate:.3f}x the host's (TSC calibrated wrongly at boot, "
              "on a loaded host?): the ns and latency figures above are off by that factor; run again on a quiet host")
    return {**meta, "summary": summary, "raw": raw}


def _checker_rates(guest: Guest, lib: str, backlog: bool) -> dict:
    """The Python and the native checker under :data:`CHECKER_FLOOD`, one at a time (consumer_rate.py); with
    ``backlog``, each reads the whole flood queued while it was stopped."""
    groups = ["--groups", str(CHECKER_FLOOD["group"]), "--rcvbuf", str(CHECKER_RCVBUF)]
    plan = {"consumers": {"python": ["python3", f"{lib}/consume.py", *groups], "native": [NATIVE_CHECKER, *groups]},
            "together": False, "backlog": backlog, "generator": dict(CHECKER_FLOOD), "folder": "/tmp/checker-rates",
            "timeout_s": 300}
    result = guest.run(["python3", f"{lib}/consumer_rate.py"], stdin=json.dumps(plan).encode(), timeout=900)
    if not result.ok:
        raise GuestError(f"the checkers' rate run failed in the guest (exit {result.exit_status})",
                         result.stderr.decode(errors="replace")[-3000:])
    return json.loads(result.text.strip().splitlines()[-1])


def goals_met(runs: list[dict]) -> dict[str, int]:
    """For each goal (and each figure reported beside them): in how many runs it held."""
    counts: dict[str, int] = {}
    for run in runs:
        for group in ("goals", "beside_goals"):
            for name, held in run["summary"][group].items():
                counts[name] = counts.get(name, 0) + bool(held)
    return counts


def _print_runs(runs: list[dict]) -> None:
    print(f"\n{len(runs)} runs, one fresh guest each")
    print(f"  {'run':>4}{'per call':>10}{'1024 loop':>10}{'128 burst':>10}{'burst 20x':>10}{'bundles':>9}"
          f"{'p99 direct':>11}{'p99 cbus':>10}{'cbus rounds':>12}{'cbus warm-up':>13}")
    for i, run in enumerate(runs, 1):
        s = run["summary"]
        rounds = [v for v in (s.get("latency_round_p99_us") or {}).get("cbus") or [] if v is not None]
        warm = [v for v in (s.get("latency_warmup_p99_us") or {}).get("cbus") or [] if v is not None]
        print(f"  {i:>4}{_fmt(s['insert_ratio_without_kick'], '.1f') + 'x':>10}"
              f"{_fmt(s['insert_ratio_big_chunk'], '.1f') + 'x':>10}{_fmt(s['insert_ratio'], '.1f') + 'x':>10}"
              f"{_fmt(s['burst_for_20x'], ',d'):>10}"
              f"{_fmt(s['rate_ratio_vs_direct'].get('cbus_bundle'), '.2f') + 'x':>9}"
              f"{_fmt(s['latency_us'].get('direct', {}).get('p99'), ',.0f'):>11}"
              f"{_fmt(s['latency_us'].get('cbus', {}).get('p99'), ',.0f'):>10}"
              f"{(_fmt(min(rounds), ',.0f') + '..' + _fmt(max(rounds), ',.0f')) if rounds else '-':>12}"
              f"{_fmt(max(warm), ',.0f') if warm else '-':>13}")
    print("  p99 in us over each run's measured rounds; 'cbus rounds': the lowest..highest round p99; 'cbus warm-up':"
          " the discarded warm-up round's")
    print("  held in: " + ", ".join(f"{name} {n}/{len(runs)}" for name, n in goals_met(runs).items()))


def _write(json_path: Path, runs: list[dict]) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"runs": runs, "goals_met": goals_met(runs), "goals": GOALS}
    json_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def run_kmod_bench(lab: Lab, shape: GuestShape, json_path: Path, runs: int = 1) -> int:
    """``runs`` times: boot a fresh guest, measure, print its table; then the runs side by side.

    The JSON is rewritten after every run, so a run that fails loses none
    of the runs before it.  Returns 0 when every run completed.
    """
    done: list[dict] = []
    for _ in range(runs):
        done.append(_measure_once(lab, shape))
        _write(json_path, done)
    if runs > 1:
        _print_runs(done)
    print(f"wrote {json_path}")
    sys.stdout.flush()
    return 0
