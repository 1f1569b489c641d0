"""``cnlab bench debug``: what debug info and vmcores cost.

- module build: the lab's module built from scratch (a fresh cache folder each time) with debug info, as the
  lab builds it, and with ``-g0`` appended (no debug info), ``runs`` times each; the shipped (stripped) and
  the debug file's sizes;
- vmcore: a scenario whose module panics on purpose (a CBUS load held by a drain stall), run through the
  engine on a guest of ``memory_mb``; each panic's dump size and seconds to write (the crashed scenario is
  retried once on a fresh guest, so one run gives two dumps), and the seconds ``cnlab debug`` takes to read
  the module's state back.

Prints a table and writes every figure to the JSON file.
"""

from __future__ import annotations

import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.engine.run import plugin_manager, run_scenarios
from lab.engine.scenario import scenario_from_dict
from lab.guest.labsetup import Lab
from lab.guest.vmcore import read_module_state
from lab.image.module import build_module

__all__ = ["run_debug_bench", "PANIC_SCENARIO"]

PANIC_SCENARIO: dict[str, Any] = {
    "name": "bench-module-panic",
    "description": "the module panics on purpose with a CBUS queue held by a drain stall",
    "duration": 3.0,
    "guest": {"cpus": 2},
    "emulators": [{"name": "generator", "path": "cbus", "context": "kthread", "rate": 400, "group": 2}],
    "faults": [{"name": "drain-stall", "at": 0.2, "ms": 20000}, {"name": "module-panic", "at": 1.5}],
}
#: Appended to the lab's own flags: the same build without debug info.
NO_DEBUG_INFO = ["KCFLAGS=-g0"]


def _builds(lab: Lab, runs: int) -> list[dict[str, Any]]:
    rows = []
    for run in range(1, runs + 1):
        for label, extra in (("debug info", None), ("no debug info", NO_DEBUG_INFO)):
            cache = Path(tempfile.mkdtemp(prefix="cnlab-bench-kmod-"))
            try:
                started = time.monotonic()
                build = build_module(lab.kernel, cache, extra_make=extra)
                seconds = time.monotonic() - started
                rows.append({"run": run, "build": label, "seconds": round(seconds, 2),
                             "shipped_bytes": build.module("cnlab").stat().st_size,
                             "debug_bytes": build.debug_modules[0].stat().st_size})
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    return rows


def _dumps(lab: Lab, memory_mb: int, out_dir: Path) -> list[dict[str, Any]]:
    pm = plugin_manager(None)
    scenario = scenario_from_dict(PANIC_SCENARIO | {"guest": {"cpus": 2, "memory": memory_mb}}, "bench",
                                  pm.registries)
    run_scenarios(lab, [scenario], 1, out_dir, out=io.StringIO())
    rows = []
    for sidecar in sorted((out_dir / "consoles").glob("*.vmcore.json")):
        info = json.loads(sidecar.read_text())
        row = {"memory_mb": memory_mb, "bytes": info.get("bytes"), "write_s": info.get("seconds"),
               "skipped": info.get("skipped")}
        if info.get("bytes"):
            started = time.monotonic()
            state = read_module_state(Path(info["path"]), [Path(m) for m in info["modules"]])
            row["read_s"] = round(time.monotonic() - started, 2)
            row["queued"] = state.counters["cbus"]["queued"]
            row["last_request"] = state.control[-1]["type"] if state.control else None
        rows.append(row)
    return rows


def run_debug_bench(lab: Lab, json_path: Path, runs: int = 3, memory_mb: int = 512) -> int:
    """Measure, print the table, write ``json_path``; 1 if a panic left no dump."""
    builds = _builds(lab, runs)
    with tempfile.TemporaryDirectory(prefix="cnlab-bench-vmcore-") as tmp:
        dumps = _dumps(lab, memory_mb, Path(tmp))
    print(f"module build from scratch against {lab.kernel.release}, {runs} run(s) each:")
    for label in ("debug info", "no debug info"):
        rows = [r for r in builds if r["build"] == label]
        seconds = [r["seconds"] for r in rows]
        print(f"  {label:14} median {statistics.median(seconds):5.1f} s (min {min(seconds):.1f}, max "
              f"{max(seconds):.1f}); shipped {rows[0]['shipped_bytes']} B, unstripped {rows[0]['debug_bytes']} B")
    print(f"vmcore of a {memory_mb} MiB guest whose module panicked ({len(dumps)} panic(s)):")
    for row in dumps:
        if row.get("bytes"):
            print(f"  {row['bytes']} B written in {row['write_s']} s; cnlab debug read it in {row['read_s']} s "
                  f"(queued {row['queued']}, last request {row['last_request']})")
        else:
            print(f"  no dump: {row.get('skipped')}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"kernel": lab.kernel.release, "accel": lab.accel.name, "builds": builds,
                                     "vmcores": dumps}, indent=1) + "\n")
    print(f"written: {json_path}")
    return 0 if dumps and all(r.get("bytes") for r in dumps) else 1
