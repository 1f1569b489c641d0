"""The scenario engine's parallel run: scenarios on N guests, checked and recorded.

The parent process builds everything once, then starts N worker processes
(each owns one guest at a time and spawns its QEMU from its main thread, so
``PR_SET_PDEATHSIG`` holds; workers die with the parent the same way).  A
worker reuses a healthy guest of the right shape and replaces a crashed one.
The parent writes every result record as it arrives (JSON lines), reports
progress, retries a scenario whose guest crashed once on a fresh guest
(``flaky`` if the retry passes), and returns a :class:`RunOutcome`.

Interrupted (SIGINT, SIGTERM), the parent kills its workers at once (their
guests die with them) and records every scenario that did not finish: as
``interrupted`` if it was running, ``not run`` if it was waiting.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lab.engine.diagnose import kernel_report_dicts, post_mortem
from lab.engine.events import RunEvent, print_events
from lab.engine.execute import execute_scenario
from lab.engine.hooks import guest_setup_args, install_lab_files, plugin_guest_files
from lab.engine.plan import guest_network
from lab.engine.results import ResultsWriter
from lab.engine.schedule import Schedule, Task
from lab.engine.timings import expected_durations, remember_timings
from lab.errors import LabError
from lab.guest.accel import qemu_version, tcg_threads_for
from lab.guest.labsetup import Lab, LabOptions
from lab.guest.machine import Guest, GuestSpec
from lab.guest.qemu_argv import GuestShape
from lab.host.procs import die_with_parent
from lab.plugin.manager import LabPluginManager, call_hook
from lab.plugin.model import Scenario, ScenarioResult

__all__ = ["run_scenarios", "RunOutcome", "RunEvent", "PluginOptions", "plugin_manager", "EXIT_OK", "EXIT_FAILED",
           "EXIT_NOT_RUN", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclasses.dataclass(frozen=True)
class PluginOptions:
    """What selects a run's plugins (picklable, so workers can rebuild the manager)."""

    config_path: Path | None = None
    plugin_args: tuple[str, ...] = ()
    plugins_dirs: tuple[Path, ...] = ()
    packages: tuple[str, ...] = ()  # --package: extra Debian packages for the guest (merged into the config's)


def plugin_manager(options: PluginOptions | None) -> LabPluginManager:
    """The plugin manager for a run (built-ins, entry points, -p, --plugins-dir, the config file)."""
    from lab.config import load_config
    from lab.plugin.manager import get_plugin_manager

    options = options or PluginOptions()
    return get_plugin_manager(load_config(options.config_path, plugin_args=options.plugin_args,
                                          plugins_dirs=options.plugins_dirs, packages=options.packages))


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What a run produced: the final record of every scenario, in scenario order.

    :param records: one per scenario: finished (a retried one: its last attempt), ``interrupted`` or
        ``not run``.
    :param environment: kernel, accelerator, QEMU and module of the run.
    :param never_ran: scenarios that never finished although the run was not interrupted (their worker died
        twice).
    :param json_path: the JSON-lines file every attempt was written to.
    :param plugin_reports: files plugins wrote (``lab_report_write``).
    :param interrupted: the exit status of the signal that cut the run short (130 SIGINT, 143 SIGTERM), or 0.
    """

    records: list[ScenarioResult]
    environment: dict
    never_ran: tuple[str, ...]
    json_path: Path
    plugin_reports: tuple[str, ...] = ()
    interrupted: int = 0

    @property
    def exit_status(self) -> int:
        """0 all passed, 1 some failed, 3 some never ran, 130/143 interrupted."""
        if self.interrupted:
            return self.interrupted
        if self.never_ran:
            return EXIT_NOT_RUN
        return EXIT_OK if all(r.passed for r in self.records) else EXIT_FAILED


def scenario_guest_spec(lab: Lab, pm: LabPluginManager, scenario: Scenario, name: str) -> GuestSpec:
    """The guest a scenario needs: its shape and command line, the plugins' additions, its network, and the
    lab's guest programs and plugins' guest files in place from its start (a restored guest has them from its
    saved state: no copy per scenario).  No command links (``cnlabctl`` on the PATH): those would cost a restored
    guest a command."""
    shape = GuestShape(scenario.cpus, scenario.memory)
    plugin_cmdline, plugin_qemu = guest_setup_args(pm, shape)
    spec = lab.guest_spec(shape, name=name, cmdline=scenario.cmdline + plugin_cmdline)
    plugin_files = tuple((f.source, f.dest, f.mode) for f in plugin_guest_files(pm))
    return dataclasses.replace(spec, qemu_extra=plugin_qemu, network=guest_network(pm.registries, scenario),
                               files=spec.files + plugin_files, links=())


# ------------------------------------------------------------------ workers
def _reusable(guest: Guest, scenario: Scenario, network: str, fresh: bool) -> bool:
    """Whether ``guest`` may run ``scenario`` too: only when guests boot cold (a restore gives every scenario
    a fresh guest for less than a boot, so no state carries over), it is healthy and of the right shape."""
    return (not fresh and guest.spec.snapshots is None and guest.alive() and guest.spec.network == network
            and guest.spec.shape == GuestShape(scenario.cpus, scenario.memory)
            and guest.spec.cmdline[:len(scenario.cmdline)] == scenario.cmdline)


def _error_record(scenario: Scenario, exc: LabError, console: str, started: float,
                  dead: Guest | None = None) -> ScenarioResult:
    return ScenarioResult(scenario.name, scenario.source, status="error",
                          error=str(exc).split("\n--- console tail")[0].partition("\n")[0],
                          # issue 15: frames decoded with the dead guest's modules; its vmcore, if it panicked
                          kernel_reports=kernel_report_dicts(console, dead.spec if dead else None),
                          data=post_mortem(dead),
                          console={"tail": "\n".join(console.splitlines()[-40:])},
                          duration=round(time.monotonic() - started, 3))


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
            scenario = task.scenario

            def progress(phase: str, name=scenario.name) -> None:
                results.put(("phase", worker, name, phase))

            started = time.monotonic()
            boot_s = 0.0
            new_guest = False
            try:
                network = guest_network(pm.registries, scenario)
                if guest is not None and not _reusable(guest, scenario, network, task.fresh):
                    guest.stop()
                    guest = None
                if guest is None:
                    progress("boot")
                    booted += 1
                    guest = Guest(scenario_guest_spec(lab, pm, scenario, f"w{worker}g{booted}"),
                                  log_dir=Path(log_dir))
                    guest.start()
                    boot_s = guest.timing.ssh
                    lib = install_lab_files(pm, guest)  # copies nothing: the spec carries the files
                    new_guest = True
                # a new guest's first scenario is judged from its boot: the module's load counts too
                record = execute_scenario(pm, guest, scenario, lib, progress, files_installed=True,
                                          from_boot=new_guest)
            except LabError as exc:
                console, dead = "", guest
                if guest is not None:
                    guest.stop()  # QEMU has exited or is killed now: the console is complete
                    console = guest.console_text()
                    guest = None
                record = _error_record(scenario, exc, console, started, dead)
            record = dataclasses.replace(
                record, attempt=task.attempt, worker=worker, boot_s=round(boot_s, 3),
                wall_s=round(time.monotonic() - started, 3),
                guest={"cpus": scenario.cpus, "memory": scenario.memory, "cmdline": list(scenario.cmdline),
                       "accel": lab.accel_for(scenario.cpus).label})
            results.put(("result", worker, scenario.name, record))
    finally:
        if guest is not None:
            guest.stop()
        pm.unconfigure()


# ------------------------------------------------------------------- parent
def _environment(lab: Lab) -> dict:
    env = {"kernel": lab.kernel.release, "kernel_package": lab.kernel.package_version,
           "accel": lab.accel.name, "accel_reason": lab.accel.reason, "qemu": qemu_version(),
           "module_source_hash": lab.module.source_hash, "host_cpus": os.cpu_count()}
    if lab.options.packages:  # a root disk variant: which packages, and the versions it got
        installed = lab.image.manifest()["rootfs"].get("packages", {})
        env["guest_packages"] = {name: installed.get(name) for name in lab.options.packages}
    return env


def _plugin_reports(pm: LabPluginManager, records: list[ScenarioResult], out_dir: Path,
                    on_event: Callable[[RunEvent], None]) -> list[str]:
    """Let plugins write their reports (``lab_report_write``); a failing plugin is reported, not fatal."""
    try:
        written = pm.call_each("lab_report_write", results=records, directory=out_dir)
    except LabError as exc:
        on_event(RunEvent("note", 0.0, detail=f"cnlab run: {exc}"))
        return []
    return [str(path) for results in written.values() for paths in results if paths for path in paths]


def _rescue_lost_tasks(workers: list, handed: dict, schedule: Schedule,
                       on_event: Callable[[RunEvent], None], elapsed: float) -> None:
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
            on_event(RunEvent("note", elapsed, detail=f"guest {index}: its worker exited (status "
                                                      f"{process.exitcode}); {task.scenario.name} runs next on "
                                                      f"guest {target}"))


def _status_word(pm: LabPluginManager, record: ScenarioResult) -> str:
    try:
        return call_hook(pm, "lab_report_status", result=record) or record.status
    except LabError:
        return record.status


def run_scenarios(lab: Lab, scenarios: list[Scenario], jobs: int, out_dir: Path, json_path: Path | None = None,
                  out=sys.stdout, plugin_config: PluginOptions | None = None,
                  on_event: Callable[[RunEvent], None] | None = None,
                  environment_extra: dict | None = None) -> RunOutcome:
    """Run ``scenarios`` on ``jobs`` guests in parallel; every record is in ``json_path`` as it arrives.

    :param on_event: sees the run's progress (default: plain lines on ``out``).
    :param environment_extra: added to every record's ``env`` (a shard's ``shard``, :mod:`lab.engine.shard`).
    """
    on_event = on_event or print_events(out)
    pm = plugin_manager(plugin_config)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = json_path or out_dir / "results.jsonl"
    log_dir = out_dir / "consoles"
    log_dir.mkdir(exist_ok=True)
    lab.image, lab.module  # noqa: B018 - build once, before the workers start
    environment = {**_environment(lab), **(environment_extra or {})}
    most_cpus = max(s.cpus for s in scenarios)
    threading = "" if lab.accel.name == "kvm" else (
        f"; TCG {tcg_threads_for(jobs, most_cpus, lab.options.tcg_threads)}-threaded "
        f"for {jobs} guest(s) of up to {most_cpus} vCPUs on {os.cpu_count()} host cores")
    on_event(RunEvent("start", 0.0, detail=f"{len(scenarios)} scenarios on {jobs} guest(s); kernel "
                                           f"{environment['kernel']}, accelerator {environment['accel']} "
                                           f"({environment['accel_reason']}){threading}", left=len(scenarios)))
    ctx = mp.get_context("spawn")
    schedule = Schedule(scenarios, jobs, expected_durations(lab.cache))
    tasks, results = [ctx.Queue() for _ in range(jobs)], ctx.Queue()
    handed: dict[int, Task | None] = {}  # per worker: the task it was given and has not answered
    running: set[str] = set()

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
    final: dict[str, ScenarioResult] = {}
    pending = {s.name: s for s in scenarios}
    started = time.monotonic()
    writer = ResultsWriter(json_path)
    interrupted = 0
    try:
        while pending:
            elapsed = time.monotonic() - started
            _rescue_lost_tasks(workers, handed, schedule, on_event, elapsed)
            try:
                kind, worker, name, payload = results.get(timeout=5)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    break
                continue
            elapsed = time.monotonic() - started
            if kind == "phase":
                running.add(name)
                on_event(RunEvent("phase", elapsed, worker, name, payload))
                continue
            running.discard(name)
            record = dataclasses.replace(payload, env=environment)
            writer.write(record.to_json())
            shape = pending[name].shape_key
            retry = record.status == "error" and record.attempt == 1
            if retry:
                on_event(RunEvent("retry", elapsed, worker, name, f"ERROR ({record.error[:120]}); retrying on a "
                                                                 "fresh guest"))
                schedule.retry(worker, Task(pending[name], attempt=2, fresh=True))
            hand_out(worker, schedule.next_for(worker, shape))
            if retry:
                continue
            if record.attempt == 2:
                record = dataclasses.replace(record, retried=True, flaky=record.passed)
            final[name] = record
            pending.pop(name)
            on_event(RunEvent("result", elapsed, worker, name, _status_word(pm, record), done=len(final),
                              failed=sum(1 for r in final.values() if not r.passed), left=len(pending),
                              outcome="flaky" if record.flaky else record.status))
    except KeyboardInterrupt:
        interrupted = EXIT_INTERRUPTED
    except SystemExit as exc:  # SIGTERM, raised by the front end's handler
        interrupted = exc.code if isinstance(exc.code, int) else 143
    finally:
        for queue_ in tasks:
            queue_.put(None)
        for w in workers:
            if interrupted:
                w.kill()  # their guests die with them (PR_SET_PDEATHSIG)
            w.join(30 if not interrupted else 5)
            if w.is_alive():
                w.kill()
        if interrupted:
            elapsed = round(time.monotonic() - started, 3)
            why = "SIGINT" if interrupted == EXIT_INTERRUPTED else f"signal {interrupted - 128}"
            for name, scenario in list(pending.items()):
                status = "interrupted" if name in running else "not run"
                record = ScenarioResult(name, scenario.source, status=status, env=environment,
                                        error=f"the run was interrupted ({why}) after {elapsed} s",
                                        guest={"cpus": scenario.cpus, "memory": scenario.memory,
                                               "cmdline": list(scenario.cmdline)})
                writer.write(record.to_json())
                final[name] = record
            pending.clear()
        writer.close()
    records = [final[s.name] for s in scenarios if s.name in final]
    remember_timings(records, lab.cache)
    extras = _plugin_reports(pm, records, out_dir, on_event)
    try:
        pm.unconfigure()
    except LabError as exc:
        on_event(RunEvent("note", time.monotonic() - started, detail=f"cnlab run: {exc}"))
    return RunOutcome(records, environment, tuple(pending), json_path, tuple(extras), interrupted)
