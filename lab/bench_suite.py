"""``cnlab bench suite``: the quick set serially and on two guests, in one run.

Prints both wall times, their ratio, and the orchestrator's overhead: the
part of the wall time that is neither booting guests nor running scenarios
in them (process start-up, image checks, copying guest programs, result
handling).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from .labsetup import Lab
from .results import read_results
from .runner import run_scenarios
from .scenario_sets import resolve_scenarios

__all__ = ["run_suite_bench"]


def _one(lab: Lab, jobs: int, out_dir: Path) -> dict:
    scenarios = resolve_scenarios([], "quick")
    started = time.monotonic()
    status = run_scenarios(lab, scenarios, jobs, out_dir, out=io.StringIO())
    wall = time.monotonic() - started
    records = read_results(out_dir / "results.jsonl")
    guest_time = sum(r.get("boot_s", 0) + r.get("duration", 0) for r in records)
    busy = guest_time / jobs  # guest seconds spread over the workers
    return {"jobs": jobs, "status": status, "wall_s": round(wall, 2), "scenarios": len(records),
            "guest_s": round(guest_time, 2), "overhead_s": round(max(wall - busy, 0.0), 2),
            "overhead_pct": round(100 * max(wall - busy, 0.0) / wall, 1)}


def run_suite_bench(lab: Lab, json_path: Path, out_dir: Path) -> int:
    lab.image, lab.module  # noqa: B018 - build outside the timed runs
    print(f"cnlab bench suite: quick set, -n 1 then -n 2, accelerator {lab.accel.name}")
    serial = _one(lab, 1, out_dir / "serial")
    parallel = _one(lab, 2, out_dir / "parallel")
    speedup = serial["wall_s"] / parallel["wall_s"]
    print(f"{'':10}{'wall s':>8}{'guest s':>9}{'overhead':>10}{'status':>8}")
    for label, row in (("-n 1", serial), ("-n 2", parallel)):
        print(f"{label:10}{row['wall_s']:8.1f}{row['guest_s']:9.1f}{row['overhead_pct']:9.1f}%{row['status']:>8}")
    print(f"speed-up -n 2 over -n 1: {speedup:.2f}x")
    result = {"accel": lab.accel.name, "serial": serial, "parallel": parallel, "speedup": round(speedup, 2)}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")
    return 0 if serial["status"] == 0 and parallel["status"] == 0 else 1
