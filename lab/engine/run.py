"""The scenario engine: scenarios on N guests in parallel, checked and recorded.

The parent process builds everything once, then starts N worker processes
(each owns one guest at a time and spawns its QEMU from its main thread, so
``PR_SET_PDEATHSIG`` holds; workers die with the parent the same way).  A
worker reuses a healthy guest of the right shape and replaces a crashed one.
The parent writes every result as it arrives (JSON lines), prints progress,
retries a scenario whose guest crashed once on a fresh guest (``flaky`` if
the retry passes), and ends with a summary table and an exit status.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from pathlib import Path

from lab.engine.execute import execute_plugin_scenario, execute_scenario
from lab.engine.results import ResultsWriter
from lab.engine.scenario import Scenario
from lab.engine.schedule import Schedule, Task
from lab.engine.timings import expected_durations, remember_timings
from lab.errors import LabError
from lab.guest.accel import tcg_threads_for
from lab.guest.console_scan import scan_console
from lab.guest.files import install_guest_programs
from lab.guest.labsetup import Lab, LabOptions
from lab.guest.machine import Guest, GuestSpec
from lab.guest.qemu_argv import GuestShape
from lab.host.procs import die_with_parent

__all__ = ["run_scenarios", "RunOutcome", "PluginOptions", "plugin_manager", "check_plugin_names", "EXIT_OK",
           "EXIT_FAILED", "EXIT_NOT_RUN"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUN = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What a run produced: the final record of every scenario that finished, in scenario order.

    :param records: one per finished scenario (a retried one: its last attempt).
    :param environment: kernel, accelerator, QEMU and module of the run.
    :param never_ran: scenarios that never finished (their worker died twice, or the run was cut short).
    :param json_path: the JSON-lines file every attempt was written to.
    :param plugin_reports: files plugins wrote (``lab_report_write``).
    """

    records: list[dict]
    environment: dict
    never_ran: tuple[str, ...]
    json_path: Path
    plugin_reports: tuple[str, ...] = ()

    @property
    def exit_status(self) -> int:
        """0 all passed, 1 some failed, 3 some never ran."""
        if self.never_ran:
            return EXIT_NOT_RUN
        return EXIT_OK if all(r["status"] == "passed" for r in self.records) else EXIT_FAILED


@dataclasses.dataclass(frozen=True)
class PluginOptions:
    """What selects a run's plugins (picklable, so workers can rebuild the manager)."""

    config_path: Path | None = None
    plugin_args: tuple[str, ...] = ()
    plugins_dirs: tuple[Path, ...] = ()



def plugin_manager(options: PluginOptions | None):
    """The plugin manager for a run (built-ins, entry points, -p, --plugins-dir, the config file)."""
    from lab.config import load_config
    from lab.plugin import get_plugin_manager

    options = options or PluginOptions()
    return get_plugin_manager(load_config(options.config_path, plugin_args=options.plugin_args,
                                          plugins_dirs=options.plugins_dirs))


def check_plugin_names(pm, scenarios: list[Scenario]) -> None:
    """Fail before anything boots if a scenario names an emulator, consumer or fault nobody registered."""
    for scenario in scenarios:
        if scenario.plugins is None:
            continue
        for kind in ("emulators", "consumers", "faults"):
            registry = getattr(pm.registries, kind)
            for name in getattr(scenario.plugins, kind):
                try:
                    registry.get(name)
                except LabError as exc:
                    raise type(exc)(f"{scenario.source}: plugins.{kind}: {exc}") from None



def guest_network(pm, scenario: Scenario) -> str:
    """``"tap"`` when a scenario's faults act on the lab's own link, else ``"user"``."""
    if scenario.plugins is None:
        return "user"
    targets = {pm.registries.faults.get(name).target for name in scenario.plugins.faults}
    return "tap" if "host-link" in targets else "user"


def scenario_guest_spec(lab: Lab, pm, scenario: Scenario, name: str) -> GuestSpec:
    """The guest a scenario needs: its shape and command line, the plugins' additions, its network."""
    from lab.plugin import guest_setup_args

    shape = GuestShape(scenario.cpus, scenario.memory)
    plugin_cmdline, plugin_qemu = guest_setup_args(pm, shape)
    spec = lab.guest_spec(shape, name=name, cmdline=scenario.cmdline + plugin_cmdline)
    return dataclasses.replace(spec, qemu_extra=plugin_qemu, network=guest_network(pm, scenario))


def execute_any(pm, guest: Guest, lib: str, scenario: Scenario, progress) -> dict:
    """Run a scenario of either kind on a ready guest (guest programs installed in ``lib``)."""
    if scenario.plugins is not None:
        return execute_plugin_scenario(pm, guest, scenario, progress)
    return execute_scenario(guest, lib, scenario, progress)


# ------------------------------------------------------------------ workers
def _worker(worker: int, options: LabOptions, plugin_config: PluginOptions | None, log_dir: str, tasks,
            results, parent_pid: int) -> None:
    """Worker process: owns at most one guest; runs scenarios from ``tasks``."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    lab = Lab(options)
    pm = plugin_manager(plugin_config)
    guest: Guest | None = None
    lib = ""
    booted = 0
    try:
        while True:
            task: Task | None = tasks.get()
            if task is None:
                return
            scenario, attempt = task.scenario, task.attempt

            def progress(phase: str, name=scenario.name) -> None:
                results.put(("progress", worker, name, phase))

            started = time.monotonic()
            boot_s = 0.0
            try:
                if guest is not None:  # a fresh guest for every scenario (restored: lab.guest.snapshot)
                    guest.stop()
                    guest = None
                if guest is None:
                    progress("boot")
                    booted += 1
                    guest = Guest(scenario_guest_spec(lab, pm, scenario, f"w{worker}g{booted}"),
                                  log_dir=Path(log_dir))
                    guest.start()
                    boot_s = guest.timing.ssh
                    lib = install_guest_programs(guest)
                record = execute_any(pm, guest, lib, scenario, progress)
            except LabError as exc:
                console = ""
                if guest is not None:
                    guest.stop()  # QEMU has exited or is killed now: the console is complete
                    console = guest.console_text()
                    guest = None
                record = {"scenario": scenario.name, "source": scenario.source, "status": "error",
                          "error": str(exc).split("\n--- console tail")[0], "invariants": [], "metrics": {},
                          "kernel_reports": [r.to_dict() for r in scan_console(console)],
                          "console": {"tail": "\n".join(console.splitlines()[-40:])},
                          "duration": round(time.monotonic() - started, 3)}
            record["attempt"] = attempt
            record["worker"] = worker
            record["boot_s"] = round(boot_s, 3)
            record["wall_s"] = round(time.monotonic() - started, 3)
            record["guest"] = {"cpus": scenario.cpus, "memory": scenario.memory, "cmdline": list(scenario.cmdline),
                               "accel": lab.accel_for(scenario.cpus).label}
            results.put(("result", worker, scenario.name, record | {"shape_key": scenario.shape_key}))
    finally:
        if guest is not None:
            guest.stop()


# ------------------------------------------------------------------- parent
def _environment(lab: Lab) -> dict:
    from lab.guest.accel import qemu_version

    return {"kernel": lab.kernel.release, "kernel_package": lab.kernel.package_version,
            "accel": lab.accel.name, "accel_reason": lab.accel.reason, "qemu": qemu_version(),
            "module_source_hash": lab.module.source_hash, "host_cpus": os.cpu_count()}


def plugin_results(scenarios: list[Scenario], records: list[dict]) -> list:
    """The ``[plugins]`` scenarios' records as the hooks' ``ScenarioResult`` objects, in run order."""
    from lab.plugin import ScenarioInfo, ScenarioResult

    by_name = {s.name: s for s in scenarios if s.plugins is not None}
    results = []
    for record in records:
        scenario = by_name.get(record["scenario"])
        if scenario is None:
            continue
        info = ScenarioInfo(scenario.name, scenario.plugins.emulators, scenario.plugins.consumers,
                            scenario.plugins.faults, cpus=scenario.cpus, params=scenario.plugins.params)
        problems = tuple(v["detail"] for v in record.get("invariants", ()) if not v["ok"])
        results.append(ScenarioResult(info, record["status"] == "passed",
                                      (record.get("metrics") or {}).get("plugins", {}), problems,
                                      record.get("error", "")))
    return results


def _plugin_reports(pm, scenarios: list[Scenario], records: list[dict], out_dir: Path, out) -> list[str]:
    """Let plugins write their reports (``lab_report_write``); a failing plugin is reported, not fatal."""
    from lab.plugin import call_hook

    results = plugin_results(scenarios, records)
    if not results:
        return []
    try:
        written = call_hook(pm, "lab_report_write", results=results, directory=out_dir)
    except LabError as exc:
        print(f"cnlab run: {exc}", file=out)
        return []
    return [str(path) for paths in written if paths for path in paths]


def _rescue_lost_tasks(workers: list, handed: dict, schedule: Schedule, out) -> None:
    """A worker process that died holding a first attempt: that scenario runs next on a busy live worker.

    (A second attempt is not moved: a scenario that kills its worker twice is reported as never run.)
    """
    for index, process in enumerate(workers, start=1):
        task = handed.get(index)
        if task is None or process.is_alive() or task.attempt > 1:
            continue
        handed[index] = None
        busy = [i for i, p in enumerate(workers, start=1) if p.is_alive() and handed.get(i) is not None]
        if busy:
            target = min(busy, key=schedule.expected_left)
            schedule.retry(target, Task(task.scenario, attempt=2, fresh=True))
            print(f"guest {index}: its worker exited (status {process.exitcode}); "
                  f"{task.scenario.name} runs next on guest {target}", file=out, flush=True)


def run_scenarios(lab: Lab, scenarios: list[Scenario], jobs: int, out_dir: Path, json_path: Path | None = None,
                  out=sys.stdout, plugin_config: PluginOptions | None = None) -> RunOutcome:
    """Run ``scenarios`` on ``jobs`` guests in parallel; every record is in ``json_path`` as it arrives."""
    pm = plugin_manager(plugin_config)
    check_plugin_names(pm, scenarios)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = json_path or out_dir / "results.jsonl"
    log_dir = out_dir / "consoles"
    log_dir.mkdir(exist_ok=True)
    lab.image, lab.module  # noqa: B018 - build once, before the workers start
    environment = _environment(lab)
    threading = "" if lab.accel.name == "kvm" else (
        f"; TCG {tcg_threads_for(jobs, max(s.cpus for s in scenarios), lab.options.tcg_threads)}-threaded "
        f"for {jobs} guest(s) of up to {max(s.cpus for s in scenarios)} vCPUs on {os.cpu_count()} host cores")
    print(f"cnlab run: {len(scenarios)} scenarios on {jobs} guest(s); kernel {environment['kernel']}, "
          f"accelerator {environment['accel']} ({environment['accel_reason']}){threading}", file=out)
    ctx = mp.get_context("spawn")
    schedule = Schedule(scenarios, jobs, expected_durations(lab.cache))
    tasks, results = [ctx.Queue() for _ in range(jobs)], ctx.Queue()
    handed: dict[int, Task | None] = {}  # per worker: the task it was given and has not answered

    def hand_out(worker: int, task: Task | None) -> None:
        handed[worker] = task
        tasks[worker - 1].put(task)  # None: nothing left, the worker ends

    for worker in range(1, jobs + 1):
        hand_out(worker, schedule.next_for(worker))
    parent = os.getpid()
    # Each worker's guests run beside the others': that decides how TCG threads them.
    options = dataclasses.replace(lab.options, guests_at_once=jobs)
    workers = [ctx.Process(target=_worker, daemon=True,
                           args=(i + 1, options, plugin_config, str(log_dir), tasks[i], results, parent))
               for i in range(jobs)]
    for w in workers:
        w.start()
    final: dict[str, dict] = {}
    pending = {s.name: s for s in scenarios}
    started = time.monotonic()
    writer = ResultsWriter(json_path)
    try:
        while pending:
            _rescue_lost_tasks(workers, handed, schedule, out)
            try:
                kind, worker, name, payload = results.get(timeout=5)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    break
                continue
            elapsed = time.monotonic() - started
            if kind == "progress":
                print(f"[{elapsed:6.1f}s] guest {worker}: {name}: {payload}", file=out, flush=True)
                continue
            shape = payload.pop("shape_key")
            record = payload | environment
            writer.write(record)
            retry = record["status"] == "error" and record["attempt"] == 1
            if retry:
                print(f"[{elapsed:6.1f}s] guest {worker}: {name}: ERROR ({record['error'][:120]}); "
                      f"retrying on a fresh guest", file=out, flush=True)
                schedule.retry(worker, Task(pending[name], attempt=2, fresh=True))
            hand_out(worker, schedule.next_for(worker, shape))
            if retry:
                continue
            if record["attempt"] == 2:
                record["retried"] = True
                record["flaky"] = record["status"] == "passed"
            final[name] = record
            pending.pop(name)
            done = len(final)
            failed = sum(1 for r in final.values() if r["status"] != "passed")
            print(f"[{elapsed:6.1f}s] guest {worker}: {name}: {record['status'].upper()} "
                  f"({done} done, {failed} failed, {len(pending)} left)", file=out, flush=True)
    finally:
        writer.close()
        for queue_ in tasks:
            queue_.put(None)
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
    records = [final[s.name] for s in scenarios if s.name in final]
    remember_timings(records, lab.cache)
    extras = _plugin_reports(pm, scenarios, records, out_dir, out)
    return RunOutcome(records, environment, tuple(pending), json_path, tuple(extras))
