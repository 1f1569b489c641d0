"""Mutation testing of the lab module: build each mutant, keep the ones that matter, run a suite on them.

For each selected mutant (:mod:`lab.image.mutants`): write a copy of ``kmod/`` with it applied, build it
exactly as the lab builds the module (:func:`lab.image.module.build_module`: W=1, cached by the source
hash), and drop it when the build fails (``compile-error``), prints a warning the unmutated build does not
(``warning``) or produces the same object code (``unchanged``).  The rest run the chosen suite on a guest
whose module is the mutant: ``killed`` when the suite fails, the guest crashes or the module does not
load; ``survived`` when it passes; ``error`` when the lab itself could not run it (not counted, retried on
the next run).

Every outcome is appended to a JSON-lines results file keyed by mutant id, so a re-run skips what is done:
build outcomes for any suite, suite outcomes for the same suite.  Suites run on ``jobs`` guests at once
(one thread per guest; builds stay one at a time, at most ``jobs`` built mutants waiting for a guest).  With a
``budget`` no suite starts once that many seconds have passed since the run began (one already running
finishes, bounded by the suite's timeout): the mutants not reached are left for the next run, so a whole set
too large for one night is covered over several by the same command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from lab.errors import BuildError, GuestError, LabError
from lab.guest.labsetup import Lab
from lab.guest.stuckwatch import StuckWatch
from lab.image.module import CompileError, build_module, kmod_dir
from lab.image.mutants import Mutant, object_code_differs, write_mutant_tree

__all__ = ["Suite", "MutationRun", "load_results", "done_ids", "BUILD_STATUSES", "SUITE_STATUSES",
           "warning_lines", "run_suite", "checks_outcome"]

BUILD_STATUSES = ("compile-error", "warning", "unchanged")

#: A checks guest's memory, by kernel flavour.  The debug flavour's KASAN shadow, lockdep tables and kmemleak
#: pool keep about half of 1 GiB (134,333 of 262,046 pages reserved): the hotplug check's queues (2^18 per CPU)
#: and its reader's 256 MiB socket buffer then left too little, and mutants whose change could not touch
#: memory died "deadlocked on memory" there.
CHECKS_MEMORY_MB = {"cloud": 1024, "debug": 2048, "kcsan": 1024}
#: The soft-lockup threshold under TCG (reported at twice it; the kernel's 10 is for hardware): with both vCPUs
#: on one host thread, a CPU coming online under the hotplug check's load waited 22 s for an IPI answer
#: (``smp_call_function_many_cond`` in ``cpu_up``) in a mutant whose change could not slow it.
TCG_WATCHDOG_THRESH_S = 60
#: The RCU stall timeout under TCG, for the same reason (Debian's is 21 s): a hard-IRQ generator of the hotplug
#: check held CPU 0 for 26 s on a debug guest beside another one, in ``ctl.c:480:sync``, a mutant of the unload
#: path that the hotplug check does not reach.
TCG_RCU_STALL_TIMEOUT_S = 60
#: The hung-task report's threshold under TCG (Debian's is 120 s): taking a CPU offline under the hotplug
#: check's load on a debug guest beside another one blocked the writer and two kworkers on
#: ``cpu_hotplug_lock`` past 120 s in mutants that free or stop generator instances (gen.c:471:sync,
#: gen.c:499:free), with no report of their own; a real deadlock still ends the suite at its timeout.
TCG_HUNG_TASK_TIMEOUT_S = 300
SUITE_STATUSES = ("killed", "survived")


def reference_lab(lab: Lab) -> Lab:
    """The lab whose module build decides whether a mutant changes the object code: ``lab`` itself, or for the
    debug flavour the same lab on the cloud kernel, without sanitizers. KASAN's descriptors of string literals
    follow the order in which GCC numbers them, so on the debug build a mutant whose every instruction is the
    same still "differs" (``bench.c:44:once``, ``cbus.c:946:once``: only ``.data`` and ``.rodata.str1.1``),
    and instrumentation can differ where the program does not. The suite still runs the debug build."""
    options = getattr(lab, "options", None)
    if options is None or options.kernel is not None or options.kernel_flavour == "cloud":
        return lab
    return Lab(dataclasses.replace(options, kernel_flavour="cloud"))


@dataclasses.dataclass(frozen=True)
class Suite:
    """What runs against each mutant: ``kind`` ``quick`` (scenario names), ``checks`` (guest check names) or
    ``pytest`` (pytest arguments); ``timeout`` bounds one mutant's run."""

    kind: str
    items: tuple[str, ...]
    timeout: float = 900.0

    @property
    def key(self) -> str:
        return f"{self.kind}:{' '.join(self.items)}"


def load_results(path: Path) -> dict[str, dict]:
    """The last record of every mutant id in a results file (none if it does not exist)."""
    records: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                records[rec["id"]] = rec
    return records


def done_ids(records: dict[str, dict], suite: Suite) -> set[str]:
    """Mutants that need nothing more: a build outcome, or a suite outcome for this suite."""
    return {i for i, r in records.items()
            if r["status"] in BUILD_STATUSES or (r["status"] in SUITE_STATUSES and r.get("suite") == suite.key)}


def warning_lines(build_log: str) -> set[str]:
    """The compiler's warning lines of a build log, without the scratch folder's path."""
    found = set()
    for line in build_log.splitlines():
        if "warning:" in line:
            found.add(line.split("/src/", 1)[-1].strip())
    return found


def _cbus_checks_argv(lib: str, items: tuple[str, ...]) -> list[str]:
    # One failure decides a mutant: the checks after it would only cost guest time.  The unload check at
    # CI's size: a leak or imbalance per cycle shows in 30 cycles as in the script's default 100.
    return ["python3", f"{lib}/cnlab_checks.py", "--no-klog", "--stop-on-failure", "--unload-cycles", "30",
            *items]


def checks_outcome(text: str, items: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(failures, checks not run) of ``cnlab_checks.py --stop-on-failure`` output: a failed result line each,
    the stop's reason when a taint stopped it, and "no result" for a check that should have run but printed
    nothing (the script died in it)."""
    failed: list[str] = []
    seen: set[str] = set()
    not_run: list[str] = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # the last line, cut short when the command was aborted or timed out
            continue
        if rec.get("stopped"):
            not_run = list(rec["not_run"])
            if not failed:
                failed.append(f"stopped after {rec['after']}: {rec['reason']}")
            continue
        # a check's timing line names it, also when it reports its parts by other names (faults)
        seen.add(rec["test"])
        if not rec.get("timing") and not rec["ok"]:
            failed.append(f"{rec['test']}: {json.dumps(rec)[:200]}")
    failed += [f"{name}: no result" for name in items if name not in seen and name not in not_run]
    return failed, not_run


def run_suite(lab: Lab, suite: Suite, source: Path, out_dir: Path, jobs: int) -> tuple[str, str]:
    """Run ``suite`` with the module built from ``source``; (``killed``/``survived``/``error``, detail)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if suite.kind == "quick":
        return _run_quick(lab, suite, source, out_dir, jobs)
    if suite.kind == "checks":
        return _run_checks(lab, suite, source, out_dir)
    return _run_pytest(lab, suite, source, out_dir)


def _run_quick(lab: Lab, suite: Suite, source: Path, out_dir: Path, jobs: int) -> tuple[str, str]:
    from lab.engine.run import plugin_manager, run_scenarios
    from lab.engine.sets import resolve_scenarios

    pm = plugin_manager(None)
    try:
        scenarios = resolve_scenarios(list(suite.items), pm.registries, "quick")
    finally:
        pm.unconfigure()
    mlab = lab.with_module_source(source, guests_at_once=jobs)
    with open(out_dir / "run.log", "w") as log:
        outcome = run_scenarios(mlab, scenarios, 1, out_dir / "run", out=log)
    if outcome.interrupted:
        return "error", f"interrupted ({outcome.interrupted})"
    bad = []
    for r in outcome.records:
        if not r.passed:
            why = r.error or "; ".join(f"{v.name}: {v.detail}" for v in r.verdicts if not v.ok)
            bad.append(f"{r.scenario} {r.status}: {why}"[:300])
        elif r.retried:
            bad.append(f"{r.scenario}: its first attempt ended in an error (guest crash?), the retry passed")
    if outcome.never_ran:
        bad.append(f"never ran (the worker died twice): {', '.join(outcome.never_ran)}")
    return ("killed", " | ".join(bad)) if bad else ("survived", f"{len(outcome.records)} scenarios passed")


class KernelProblemBeforeModule(Exception):
    """The guest's kernel reported a problem during its boot before the module began to load (a debug
    kernel's early-boot report under TCG): the mutant cannot have caused it, so the guest is booted again."""


def _run_checks(lab: Lab, suite: Suite, source: Path, out_dir: Path) -> tuple[str, str]:
    """Boot a guest with the module of ``source``, run the suite's guest checks and the console check; the
    checks' whole report lines go to ``out_dir/checks.jsonl`` and the console log beside it (the outcome's
    detail keeps 200 characters of each failure). A guest whose kernel reported a problem before the module
    began to load is booted once more; twice is an ``error``, not a kill."""
    for name in ("mutant", "mutant-reboot"):
        try:
            return _checks_in_guest(lab, suite, source, out_dir, name)
        except KernelProblemBeforeModule as exc:
            early = str(exc)
    return "error", f"the kernel reported a problem before the module loaded, at two boots: {early}"[:400]


def _checks_in_guest(lab: Lab, suite: Suite, source: Path, out_dir: Path, name: str) -> tuple[str, str]:
    from lab.guest.files import install_guest_programs
    from lab.guest.kcheck import KernelWatch
    from lab.guest.machine import Guest
    from lab.guest.qemu_argv import GuestShape
    from lab.guest.snapshot import discard_saved_state, kernel_problems_of_the_boot

    mlab = lab.with_module_source(source)
    failed: list[str] = []
    stuck: StuckWatch | None = None
    shape = GuestShape(cpus=2, memory_mb=CHECKS_MEMORY_MB.get(lab.options.kernel_flavour, 1024))
    cmdline = ("slub_debug=FZPU",) + ((f"watchdog_thresh={TCG_WATCHDOG_THRESH_S}",
                                       f"rcupdate.rcu_cpu_stall_timeout={TCG_RCU_STALL_TIMEOUT_S}",
                                       f"sysctl.kernel.hung_task_timeout_secs={TCG_HUNG_TASK_TIMEOUT_S}")
                                      if lab.accel_for(shape.cpus).name == "tcg" else ())
    try:
        with Guest(mlab.guest_spec(shape, name=name, cmdline=cmdline), log_dir=out_dir) as g:
            lib = install_guest_programs(g)
            watch = KernelWatch(g, from_boot=True)  # a mutant's init runs at boot: its reports count
            at_boot = watch.report(leaks=False)  # what the boot did, without a kmemleak scan
            if not at_boot.clean:  # decided before any check: no need to run them
                early = kernel_problems_of_the_boot(g, g.spec)
                if early:  # a restored guest replays its saved boot: the next one must boot anew
                    discard_saved_state(g.spec, "the kernel reported a problem before the module loaded")
                    raise KernelProblemBeforeModule("; ".join(early[:3]))
                return "killed", "at boot: " + at_boot.describe()[:300]
            stuck = StuckWatch(g)
            with stuck:
                r = g.run(_cbus_checks_argv(lib, suite.items), timeout=suite.timeout, abort=stuck.tripped)
            (out_dir / "checks.jsonl").write_text(r.text)
            failed, _ = checks_outcome(r.text, suite.items)
            if stuck.report is not None:  # the kernel will answer no taint or kmemleak question: end here
                ran = [f for f in failed if not f.endswith(": no result")]  # the rest were cut short by the abort
                return "killed", " | ".join([f"console: {stuck.report.kind}: {stuck.report.title}"[:300], *ran])
            if r.extra.get("timed_out"):
                failed.append(f"timed out after {suite.timeout:.0f} s")
            if r.exit_status != 0 and not failed:
                failed.append(f"cnlab_checks.py exited {r.exit_status}")
            report = watch.report() if g.alive() else None
            if report is None:
                failed.append("guest gone")
            elif not report.clean:
                failed.append("console: " + report.describe()[:200])
    except GuestError as exc:  # the mutant crashed the guest, or the module did not load
        # a panic with panic=-1 ends QEMU, and SSH with it, before the watch's next look: name the panic
        found = stuck.check() if stuck is not None else None
        if found is not None:
            failed.insert(0, f"console: {found.kind}: {found.title}"[:300])
        failed.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    return ("killed", " | ".join(failed)) if failed else ("survived", f"{len(suite.items)} checks passed")


def _run_pytest(lab: Lab, suite: Suite, source: Path, out_dir: Path) -> tuple[str, str]:
    env = {**os.environ, "CNLAB_KMOD": str(source), "CNLAB_LAB_TESTS": "1", "CNLAB_CACHE": str(lab.cache),
           "CNLAB_LOG_DIR": str(out_dir / "lab-logs")}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *suite.items]
    with open(out_dir / "pytest.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            status = proc.wait(timeout=suite.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "killed", f"pytest timed out after {suite.timeout:.0f} s"
    tail = (out_dir / "pytest.log").read_text().strip().splitlines()[-1:] or [""]
    if status == 0:
        return "survived", tail[0]
    if status == 1:
        return "killed", tail[0]
    return "error", f"pytest exited {status}: {tail[0]}"


class MutationRun:
    """One ``cnlab mutate`` run: builds, filters and runs the suite on ``mutants``; results in ``out_dir``."""

    def __init__(self, lab: Lab, mutants: list[Mutant], suite: Suite | None, out_dir: Path, jobs: int = 1,
                 on_line: Callable[[str], None] = print, baseline: bool = True, budget: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lab, self.mutants, self.suite, self.out_dir, self.jobs = lab, mutants, suite, out_dir, jobs
        self.on_line, self.baseline, self.budget, self.clock = on_line, baseline, budget, clock
        #: whose build the object code is compared on (:func:`reference_lab`)
        self.reference = reference_lab(lab)
        self.results_path = out_dir / "results.jsonl"
        self._lock = threading.Lock()
        self._deadline: float | None = None
        #: ids of the selected mutants the budget left undecided (for the next run)
        self.left: list[str] = []

    def _write(self, record: dict) -> None:
        with self._lock:
            with open(self.results_path, "a") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")

    def _say(self, text: str) -> None:
        with self._lock:
            self.on_line(text)

    def build(self, mutant: Mutant, base_ko: Path, base_warnings: set[str]) -> tuple[dict, Path | None]:
        """Build one mutant; (its record so far, its source tree if it is to be run). ``base_ko`` is the unmutated
        module built for :attr:`reference`, ``base_warnings`` the warnings of its build for the run's kernel."""
        tree = write_mutant_tree(kmod_dir(), mutant, self.out_dir / "trees" / _safe(mutant.mutant_id) / "kmod")
        record = {**mutant.to_json(), "source_hash": None}
        started = time.monotonic()
        try:
            built = build_module(self.lab.kernel, self.lab.cache, source=tree, what="mutant",
                                 log_name="kmod-mutant-build.log")
        except CompileError as exc:
            record.update(status="compile-error", build_s=round(time.monotonic() - started, 2),
                          detail=str(exc).split("; full output")[0][:300])
            return record, None
        record.update(build_s=round(time.monotonic() - started, 2), source_hash=built.source_hash)
        new = sorted(warning_lines(built.build_log) - base_warnings)
        if new:
            record.update(status="warning", detail=" | ".join(new[:3])[:300])
            return record, None
        compared = built.module("cnlab")
        if self.reference is not self.lab:
            try:
                compared = build_module(self.reference.kernel, self.reference.cache, source=tree, what="mutant",
                                        log_name="kmod-mutant-build.log").module("cnlab")
            except CompileError as exc:
                record.update(status="compile-error", detail=str(exc).split("; full output")[0][:300])
                return record, None
        differs = object_code_differs(base_ko, compared)
        if not differs:
            record.update(status="unchanged", detail="same object code as the unmutated module"
                          + ("" if self.reference is self.lab else " (built without sanitizers)"))
            return record, None
        record["sections"] = differs
        return record, tree

    def _over_budget(self) -> bool:
        return self._deadline is not None and self.clock() >= self._deadline

    def _room_for_one_more(self, ahead: threading.Semaphore | None) -> bool:
        """Wait until fewer than ``jobs`` built mutants wait for a guest; False once the budget is spent."""
        while not self._over_budget():
            if ahead is None or ahead.acquire(timeout=1.0):
                if not self._over_budget():
                    return True
                if ahead is not None:
                    ahead.release()
        return False

    def run(self) -> dict[str, dict]:
        """Do what is not done yet (within the budget); the results of every selected mutant decided, by id."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._deadline = None if self.budget is None else self.clock() + self.budget
        self.left = []
        records = load_results(self.results_path)
        suite = self.suite
        base = build_module(self.lab.kernel, self.lab.cache)
        base_ko, base_warnings = base.module("cnlab"), warning_lines(base.build_log)
        if self.reference is not self.lab:
            base_ko = build_module(self.reference.kernel, self.reference.cache).module("cnlab")
        if suite is not None and self.baseline:
            self._check_baseline(records, suite, base.source_hash)
        todo = [m for m in self.mutants if m.mutant_id not in (done_ids(records, suite) if suite else
                                                                 {i for i, r in records.items()
                                                                  if r["status"] in BUILD_STATUSES
                                                                  or "build_s" in r})]
        skipped = len(self.mutants) - len(todo)
        self._say(f"cnlab mutate: {len(self.mutants)} mutants selected, {skipped} done before, {len(todo)} to do"
                  + (f"; suite {suite.key} on {self.jobs} guest(s)" if suite else "; build only"))
        pool = ThreadPoolExecutor(max_workers=self.jobs) if suite else None
        ahead = threading.BoundedSemaphore(2 * self.jobs) if suite else None  # running + waiting for a guest
        futures: list[Future] = []
        try:
            for index, mutant in enumerate(todo, start=1):
                if not self._room_for_one_more(ahead):
                    self.left += [m.mutant_id for m in todo[index - 1:]]
                    break
                record, tree = self.build(mutant, base_ko, base_warnings)
                if tree is None and ahead is not None:
                    ahead.release()
                if tree is None or suite is None:
                    if tree is not None:
                        record.update(status="built", detail="object code changed: " + ", ".join(
                            record.get("sections", [])[:4]))
                    self._write(record)
                    self._say(f"[{index}/{len(todo)}] {mutant.mutant_id}: {record['status']} "
                              f"({record['build_s']} s build) {record.get('detail', '')[:100]}")
                    continue
                self._say(f"[{index}/{len(todo)}] {mutant.mutant_id}: built in {record['build_s']} s, "
                          f"object code differs ({', '.join(record['sections'][:3])}); suite queued")
                futures.append(pool.submit(self._suite_one, record, tree, suite, ahead))
            for f in futures:
                f.result()
        except BaseException:
            if pool is not None:  # interrupted: do not wait for the suites running (the caller ends them)
                pool.shutdown(wait=False, cancel_futures=True)
            raise
        if pool is not None:
            pool.shutdown(wait=True)
        if self.left:
            self._say(f"cnlab mutate: the budget of {self.budget:g} s is spent: {len(self.left)} of "
                      f"{len(self.mutants)} mutants left for the next run (the same command resumes)")
        final = load_results(self.results_path)
        return {m.mutant_id: final[m.mutant_id] for m in self.mutants
                if m.mutant_id in final and m.mutant_id not in self.left}

    def _suite_one(self, record: dict, tree: Path, suite: Suite, ahead: threading.Semaphore | None = None) -> None:
        try:
            if self._over_budget():  # built in time, but its guest came too late
                with self._lock:
                    self.left.append(record["id"])
                return
            self._run_one(record, tree, suite)
        finally:
            if ahead is not None:
                ahead.release()

    def _run_one(self, record: dict, tree: Path, suite: Suite) -> None:
        started = time.monotonic()
        try:
            status, detail = run_suite(self.lab, suite, tree, self.out_dir / "runs" / _safe(record["id"]),
                                       self.jobs)
        except (BuildError, LabError) as exc:
            status, detail = "error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        record = {**record, "status": status, "detail": detail, "suite": suite.key,
                  "suite_s": round(time.monotonic() - started, 1)}
        self._write(record)
        self._say(f"{record['id']}: {status.upper()} after {record['suite_s']} s  {detail[:140]}")

    def _check_baseline(self, records: dict[str, dict], suite: Suite, source_hash: str) -> None:
        key = f"baseline:{source_hash}"
        done = records.get(key)
        if done is not None and done.get("suite") == suite.key and done["status"] == "survived":
            return
        self._say(f"cnlab mutate: the suite on the unmutated module first ({suite.key})")
        started = time.monotonic()
        status, detail = run_suite(self.lab, suite, kmod_dir(), self.out_dir / "runs" / "baseline", self.jobs)
        self._write({"id": key, "status": status, "detail": detail, "suite": suite.key, "baseline": True,
                     "suite_s": round(time.monotonic() - started, 1)})
        if status != "survived":
            raise LabError(f"cnlab mutate: the suite fails on the unmutated module ({detail[:200]}); "
                           "every mutant would count as killed")
        self._say(f"baseline passed in {time.monotonic() - started:.1f} s")


def _safe(mutant_id: str) -> str:
    return mutant_id.replace(":", "_").replace("/", "_")
