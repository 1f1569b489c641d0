"""``cnlab bench suite``: the quick set serially and on two guests, in one run.

Prints both wall times, their ratio, and where the time went:

- guest time: booting guests and running scenarios in them, per worker;
- overhead: the part of the wall time that is not guest time on the busiest
  worker (the critical path): process start-up, image checks, copying guest
  programs, result handling;
- idle: how much less the other workers had to do than the busiest one
  (the schedule's imbalance: scenarios do not split evenly);
- host CPU: CPU seconds of the orchestrator, its workers and the QEMUs,
  divided by the wall time.  Near the number of host cores, the guests are
  CPU-bound and more parallelism cannot help.
"""

from __future__ import annotations

import io
import json
import os
import resource
import statistics
import time
from pathlib import Path

from lab.engine.results import read_results
from lab.engine.run import plugin_manager, run_scenarios
from lab.engine.sets import resolve_scenarios
from lab.guest.labsetup import Lab

__all__ = ["run_suite_bench"]


def _cpu_seconds() -> float:
    """Host CPU time of this process and every descendant reaped so far (workers, QEMUs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _one(lab: Lab, jobs: int, out_dir: Path) -> dict:
    scenarios = resolve_scenarios([], plugin_manager(None).registries, "quick")
    started, cpu_before = time.monotonic(), _cpu_seconds()
    status = run_scenarios(lab, scenarios, jobs, out_dir, out=io.StringIO()).exit_status
    wall = time.monotonic() - started
    cpu = _cpu_seconds() - cpu_before
    records = read_results(out_dir / "results.jsonl")
    per_worker: dict[int, float] = {}
    for r in records:
        per_worker[r.worker] = per_worker.get(r.worker, 0.0) + r.boot_s + r.duration
    guest_time = sum(per_worker.values())
    busiest = max(per_worker.values(), default=0.0)
    overhead = max(wall - busiest, 0.0)
    idle = busiest - guest_time / jobs
    return {"jobs": jobs, "status": status, "wall_s": round(wall, 2), "scenarios": len(records),
            "guest_s": round(guest_time, 2), "busiest_worker_s": round(busiest, 2),
            "overhead_s": round(overhead, 2), "overhead_pct": round(100 * overhead / wall, 1),
            "idle_s": round(idle, 2), "idle_pct": round(100 * idle / wall, 1),
            "host_cpu_s": round(cpu, 1), "host_cores_busy": round(cpu / wall, 2),
            "per_scenario": [{k: getattr(r, k) for k in ("scenario", "status", "worker", "boot_s", "duration",
                                                         "wall_s")} for r in records],
            "not_passed": [{"scenario": r.scenario, "attempt": r.attempt, "status": r.status, "error": r.error}
                           for r in records if r.status != "passed"]}


def run_suite_bench(lab: Lab, json_path: Path, out_dir: Path, runs: int = 1) -> int:
    """``runs`` pairs of runs, each ``-n 1`` then ``-n 2`` (interleaved, so a host whose speed drifts moves both
    alike), into ``out_dir`` (``serial``, ``parallel``; ``serial-K``, ``parallel-K`` with more than one pair);
    1 if a scenario attempt did not pass (a retry that passed too: its wall time is in the figures), each
    named with its error.  With several pairs the medians are printed too; the speed-up's is the median of
    each pair's own."""
    lab.image, lab.module  # noqa: B018 - build outside the timed runs
    times = f", {runs} times, interleaved" if runs > 1 else ""
    print(f"cnlab bench suite: quick set, -n 1 then -n 2{times}, accelerator {lab.accel.name}")
    pairs = []
    for k in range(1, runs + 1):
        suffix = f"-{k}" if runs > 1 else ""
        serial = _one(lab, 1, out_dir / f"serial{suffix}")
        parallel = _one(lab, 2, out_dir / f"parallel{suffix}")
        pairs.append({"serial": serial, "parallel": parallel,
                      "speedup": round(serial["wall_s"] / parallel["wall_s"], 2)})
    print(f"{'':10}{'wall s':>8}{'guest s':>9}{'overhead':>10}{'idle':>8}{'host CPU':>14}{'status':>8}{'speed-up':>10}")
    for k, pair in enumerate(pairs, 1):
        for label, row in (("-n 1", pair["serial"]), ("-n 2", pair["parallel"])):
            label += f" ({k})" if runs > 1 else ""
            speedup = f"{pair['speedup']:9.2f}x" if row is pair["parallel"] else ""
            print(f"{label:10}{row['wall_s']:8.1f}{row['guest_s']:9.1f}{row['overhead_pct']:9.1f}%"
                  f"{row['idle_pct']:7.1f}%{row['host_cores_busy']:>8.2f} cores{row['status']:>8}{speedup}")
    median = {"serial_wall_s": round(statistics.median(p["serial"]["wall_s"] for p in pairs), 2),
              "parallel_wall_s": round(statistics.median(p["parallel"]["wall_s"] for p in pairs), 2),
              "speedup": round(statistics.median(p["speedup"] for p in pairs), 2)}
    if runs > 1:
        print(f"medians of {runs}: -n 1 {median['serial_wall_s']:.1f} s, -n 2 {median['parallel_wall_s']:.1f} s")
    print(f"speed-up -n 2 over -n 1: {median['speedup']:.2f}x{' (median of the pairs)' if runs > 1 else ''}; "
          f"the host has {os.cpu_count()} cores")
    not_passed = [(label, row) for pair in pairs
                  for label, run in (("-n 1", pair["serial"]), ("-n 2", pair["parallel"])) for row in run["not_passed"]]
    for label, row in not_passed:
        print(f"WARNING: {label}: {row['scenario']} attempt {row['attempt']} {row['status']}: {row['error']}")
    result = {"accel": lab.accel.name, "runs": runs, "median": median, "pairs": pairs}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")
    failed = any(p["serial"]["status"] or p["parallel"]["status"] for p in pairs)
    return 1 if failed or not_passed else 0
