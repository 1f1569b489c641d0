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
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .console_scan import scan_console
from .errors import GuestError, LabError
from .faults import FaultTimeline
from .guest import Guest
from .guestfiles import install_guest_programs
from .kcheck import ALLOWED_TAINT, read_taint, unexpected_taint
from .labsetup import Lab, LabOptions
from .procs import die_with_parent
from .qemu_argv import GuestShape
from .report import write_html
from .results import ResultsWriter, write_junit
from .scenario import Scenario

__all__ = ["run_scenarios", "PluginOptions", "agent_plan", "evaluate", "EXIT_OK", "EXIT_FAILED", "EXIT_NOT_RUN"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUN = 0, 1, 2, 3
GEN_IDX_BASE = 0x20
#: Taint a kernel report of this kind sets (W for a WARNING), allowed when the report is expected.
TAINT_FOR_KIND = {"warning": 1 << 9}
NS = 1_000_000_000
#: Faults the guest agent applies itself (on time, without an SSH round trip);
#: the rest (QMP pause) are applied from the host.
IN_GUEST_FAULTS = ("cpu_offline", "stall", "alloc_fail", "queue_limit", "warn")


# ----------------------------------------------------------------- planning
def agent_plan(scenario: Scenario, timeout_scale: int) -> dict:
    """What the guest agent runs: generator configs per the module ABI and consumers."""
    generators = []
    for i, emu in enumerate(scenario.emulators):
        generators.append({
            "gen_id": i + 1,
            "idx": GEN_IDX_BASE + 2 * i,  # each emulator its own (even) connector id
            "val": 1,
            "group": emu.group,
            "count": emu.count,
            "duration_ns": 0 if emu.count else int(scenario.duration * NS),
            "cpu_mask": sum(1 << c for c in emu.cpus),
            "rate": emu.rate,
            "size_min": emu.payload[0],
            "size_max": emu.payload[1],
            "context": emu.context,
            "path": emu.path,
            "flags": 1 if emu.bundle else 0,
            "burst": 0,
        })
    consumers = [asdict(c) | {"groups": list(c.groups)} for c in scenario.consumers]
    in_guest = [asdict(f) for f in scenario.faults if f.kind in IN_GUEST_FAULTS]
    return {"duration": scenario.duration, "generators": generators, "consumers": consumers,
            "faults": in_guest, "timeout_scale": timeout_scale}


# --------------------------------------------------------------- evaluation
def _verdict(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


def evaluate(scenario: Scenario, report: dict, kernel_reports: list[dict], taint_before: int,
             taint_after: int, slowdown: int = 1) -> tuple[list[dict], dict]:
    """Invariant verdicts and headline metrics for one finished scenario.

    Latency bounds are written for KVM and multiplied by ``slowdown`` (10 under TCG).
    """
    inv = scenario.invariants
    verdicts = []
    expected_kinds = set(inv.expect_problems)
    kinds = {r["kind"] for r in kernel_reports}
    if inv.no_kernel_problems or expected_kinds:
        unexpected = sorted(kinds - expected_kinds)
        missing = sorted(expected_kinds - kinds)
        verdicts.append(_verdict("kernel_problems", not unexpected and not missing,
                                 f"unexpected: {unexpected or 'none'}; expected but absent: {missing or 'none'}"))
    if inv.no_new_taint:
        allowed = ALLOWED_TAINT | sum(TAINT_FOR_KIND.get(k, 0) for k in expected_kinds)
        new = unexpected_taint(taint_before, taint_after, allowed)
        verdicts.append(_verdict("taint", new == 0, f"before {taint_before}, after {taint_after}, new bits {new:#x}"))
    generated = sum(g.get("generated", 0) for g in report["generators"].values())
    received = sum(c["received"] for c in report["consumers"])
    direct_ids = {str(i + 1) for i, e in enumerate(scenario.emulators) if e.path == "direct"}
    counted = sum(g.get(k, 0) for gid, g in report["generators"].items() if gid in direct_ids
                  for k in ("err_nolistener", "err_nomem", "err_full", "err_other"))
    cbus = report["cbus"]
    counted += sum(cbus.get(k, 0) for k in ("drop_full", "drop_nomem", "drop_nolistener", "drop_nlerr", "rejected"))
    loss = generated - received if len(report["consumers"]) == 1 else None
    if inv.accounting:
        ok = report["cbus_balanced"] and cbus["queued"] == 0 and not report["errors"]
        detail = f"cbus balanced={report['cbus_balanced']} queued={cbus['queued']} errors={report['errors']}"
        if loss is not None:
            ok = ok and loss == counted
            detail += f"; lost {loss} = counted drops {counted}" if loss == counted else \
                f"; lost {loss} != counted drops {counted} (silent loss)"
        verdicts.append(_verdict("accounting", ok, detail))
    if loss is not None:
        verdicts.append(_verdict("loss", loss <= inv.max_loss, f"lost {loss} of {generated} (max {inv.max_loss})"))
    gaps = sum(s["gaps"] for c in report["consumers"] for s in c["per_gen"].values())
    reordered = sum(s["reordered"] for c in report["consumers"] for s in c["per_gen"].values())
    verdicts.append(_verdict("order", reordered == 0, f"{reordered} out-of-order per (generator, CPU)"))
    p99 = max((c["latency_us"]["p99"] or 0.0) for c in report["consumers"])
    if inv.p99_latency_us:
        bound = inv.p99_latency_us * slowdown
        verdicts.append(_verdict("latency", p99 <= bound, f"p99 {p99} us (max {bound:.0f}: "
                                 f"{inv.p99_latency_us:.0f} x accelerator slowdown {slowdown})"))
    rate = sum(c["rate"] for c in report["consumers"])
    if inv.min_rate:
        verdicts.append(_verdict("throughput", rate >= inv.min_rate, f"{rate:.0f} msgs/s (min {inv.min_rate})"))
    metrics = {
        "generated": generated, "received": received, "lost": loss, "gaps": gaps, "reordered": reordered,
        "counted_drops": counted, "rate": round(rate, 1),
        "latency_us": report["consumers"][0]["latency_us"] if report["consumers"] else {},
        "enobufs": sum(c["enobufs"] for c in report["consumers"]),
        "socket_drops": sum(max(c["socket_drops"], 0) for c in report["consumers"]),
        "cbus": cbus,
    }
    return verdicts, metrics


# ---------------------------------------------------------------- execution
#: After a report starts, how long the console may keep growing before we read it.
REPORT_SETTLE_SECONDS = 3.0


def _console_since(guest: Guest, offset: int) -> str:
    """The console from ``offset``; once a problem shows, keep reading until the
    report stops growing (bounded), so a report still being printed is whole."""

    def read() -> str:
        with open(guest.console_log, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    text = read()
    if not scan_console(text):
        return text
    deadline = time.monotonic() + REPORT_SETTLE_SECONDS * guest.spec.accel.timeout_scale
    while time.monotonic() < deadline:
        time.sleep(0.25)  # the console is a file QEMU appends to: no notification to wait on
        newer = read()
        if newer == text:
            break
        text = newer
    return text


def execute_scenario(guest: Guest, lib: str, scenario: Scenario, progress) -> dict:
    """Run one scenario on a ready guest; returns the result record (without env)."""
    started = time.monotonic()
    console_start = guest.console_log.stat().st_size if guest.console_log.exists() else 0
    taint_before = read_taint(guest)
    plan = agent_plan(scenario, guest.spec.accel.timeout_scale)
    host_faults = tuple(f for f in scenario.faults if f.kind not in IN_GUEST_FAULTS)
    timeline = FaultTimeline(guest, lib, host_faults, scenario.duration)

    def sink(stream: str, chunk: bytes) -> None:
        if stream == "stderr" and b"CNLAB-AGENT started" in chunk and not timeline.started:
            progress("load")
            timeline.start()

    progress("setup")
    result = guest.run(["python3", f"{lib}/scenario_agent.py"], stdin=json.dumps(plan).encode(),
                       timeout=scenario.duration + 120, sink=sink)
    applied = [f.to_dict() for f in timeline.stop()]
    progress("checks")
    if not result.ok:
        raise GuestError(f"scenario agent failed (status {result.exit_status}): "
                         f"{result.stderr.decode(errors='replace').strip()[-400:]}")
    report = json.loads(result.text)
    applied = sorted(applied + report.get("faults", []), key=lambda f: f["at"])
    taint_after = read_taint(guest)
    console_slice = _console_since(guest, console_start)
    kernel_reports = [r.to_dict() for r in scan_console(console_slice)]
    verdicts, metrics = evaluate(scenario, report, kernel_reports, taint_before, taint_after,
                                 guest.spec.accel.slowdown)
    return {
        "scenario": scenario.name,
        "source": scenario.source,
        "status": "passed" if all(v["ok"] for v in verdicts) else "failed",
        "invariants": verdicts,
        "metrics": metrics,
        "series": {c["name"]: c["series"] for c in report["consumers"]},
        "faults": applied,
        "kernel_reports": kernel_reports,
        "taint": {"before": taint_before, "after": taint_after},
        "console": {"path": str(guest.console_log), "offset": console_start,
                    "tail": "\n".join(console_slice.splitlines()[-40:])},
        "duration": round(time.monotonic() - started, 3),
    }


def execute_plugin_scenario(pm, guest: Guest, scenario: Scenario, progress) -> dict:
    """Run a ``[plugins]`` scenario through the plugin hooks (``lab.plugin.run_scenario``).

    The plugins' own checks (``lab_result_check``) become one verdict; the
    console scan and the taint check are the engine's, as for any scenario.
    """
    from .plugin import ScenarioInfo, run_scenario

    started = time.monotonic()
    console_start = guest.console_log.stat().st_size if guest.console_log.exists() else 0
    taint_before = read_taint(guest)
    info = ScenarioInfo(scenario.name, scenario.plugins.emulators, scenario.plugins.consumers,
                        scenario.plugins.faults, cpus=scenario.cpus, params=scenario.plugins.params)
    progress("load")
    result = run_scenario(pm, guest, info, durations={"load": scenario.duration})
    progress("checks")
    taint_after = read_taint(guest)
    kernel_reports = [r.to_dict() for r in scan_console(_console_since(guest, console_start))]
    detail = result.error or "; ".join(result.problems) or "no problems"
    verdicts = [_verdict("plugins", result.error == "" and not result.problems, detail)]
    expected = set(scenario.invariants.expect_problems)
    kinds = {r["kind"] for r in kernel_reports}
    verdicts.append(_verdict("kernel_problems", kinds == expected,
                             f"unexpected: {sorted(kinds - expected) or 'none'}; "
                             f"expected but absent: {sorted(expected - kinds) or 'none'}"))
    allowed = ALLOWED_TAINT | sum(TAINT_FOR_KIND.get(k, 0) for k in expected)
    new = unexpected_taint(taint_before, taint_after, allowed)
    verdicts.append(_verdict("taint", new == 0, f"before {taint_before}, after {taint_after}, new bits {new:#x}"))
    data = json.loads(json.dumps(dict(result.data), default=str))
    headline = _plugin_headline(data)
    if "lost" in headline:
        max_loss = scenario.invariants.max_loss
        verdicts.append(_verdict("loss", headline["lost"] <= max_loss,
                                 f"lost {headline['lost']} of {headline['received'] + headline['lost']} "
                                 f"(max {max_loss})"))
    return {
        "scenario": scenario.name,
        "source": scenario.source,
        "status": "passed" if all(v["ok"] for v in verdicts) else "failed",
        "invariants": verdicts,
        "metrics": headline | {"plugins": data},
        "plugins": {"emulators": list(info.emulators), "consumers": list(info.consumers),
                    "faults": list(info.faults), "status": pm.hook.lab_report_status(result=result)},
        "faults": [],
        "kernel_reports": kernel_reports,
        "taint": {"before": taint_before, "after": taint_after},
        "console": {"path": str(guest.console_log), "offset": console_start},
        "duration": round(time.monotonic() - started, 3),
    }


@dataclasses.dataclass(frozen=True)
class PluginOptions:
    """What selects a run's plugins (picklable, so workers can rebuild the manager)."""

    config_path: Path | None = None
    plugin_args: tuple[str, ...] = ()
    plugins_dirs: tuple[Path, ...] = ()


def _plugin_headline(data: dict) -> dict:
    """The summary table's figures from the built-in runner plugin's report, if it ran."""
    consumers = (data.get("runner") or {}).get("consumers") or []
    if not consumers:
        return {}
    return {
        "received": sum(c.get("received", 0) for c in consumers),
        "lost": sum((c.get("accounting") or {}).get("lost", 0) for c in consumers),
        "latency_us": consumers[0].get("latency_us") or {},
    }


def plugin_manager(options: PluginOptions | None):
    """The plugin manager for a run (built-ins, entry points, -p, --plugins-dir, the config file)."""
    from .config import load_config
    from .plugin import get_plugin_manager

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


# ------------------------------------------------------------------ workers
def _worker(worker: int, options: LabOptions, plugin_config: PluginOptions | None, log_dir: str, tasks,
            results, parent_pid: int) -> None:
    """Worker process: owns at most one guest; runs scenarios from ``tasks``."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    from .plugin import guest_setup_args

    lab = Lab(options)
    pm = plugin_manager(plugin_config)
    guest: Guest | None = None
    lib = ""
    booted = 0
    try:
        while True:
            task = tasks.get()
            if task is None:
                return
            scenario, attempt, fresh = task

            def progress(phase: str, name=scenario.name) -> None:
                results.put(("progress", worker, name, phase))

            started = time.monotonic()
            boot_s = 0.0
            try:
                if guest is not None and (fresh or not guest.alive() or
                                          guest.spec.shape != GuestShape(scenario.cpus, scenario.memory) or
                                          guest.spec.cmdline[:len(scenario.cmdline)] != scenario.cmdline):
                    guest.stop()
                    guest = None
                if guest is None:
                    progress("boot")
                    booted += 1
                    shape = GuestShape(scenario.cpus, scenario.memory)
                    plugin_cmdline, plugin_qemu = guest_setup_args(pm, shape)
                    spec = lab.guest_spec(shape, name=f"w{worker}g{booted}",
                                          cmdline=scenario.cmdline + plugin_cmdline)
                    spec = dataclasses.replace(spec, qemu_extra=plugin_qemu)
                    guest = Guest(spec, log_dir=Path(log_dir))
                    guest.start()
                    boot_s = guest.timing.ssh
                    lib = install_guest_programs(guest)
                if scenario.plugins is not None:
                    record = execute_plugin_scenario(pm, guest, scenario, progress)
                else:
                    record = execute_scenario(guest, lib, scenario, progress)
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
            record["guest"] = {"cpus": scenario.cpus, "memory": scenario.memory, "cmdline": list(scenario.cmdline)}
            results.put(("result", worker, scenario.name, record))
    finally:
        if guest is not None:
            guest.stop()


# ------------------------------------------------------------------- parent
def _environment(lab: Lab) -> dict:
    from .accel import qemu_version

    return {"kernel": lab.kernel.release, "kernel_package": lab.kernel.package_version,
            "accel": lab.accel.name, "accel_reason": lab.accel.reason, "qemu": qemu_version(),
            "module_source_hash": lab.module.source_hash, "host_cpus": os.cpu_count()}


def _print_summary(records: list[dict], out) -> None:
    print(f"\n{'scenario':32} {'status':8} {'vCPU':>4} {'rate/s':>9} {'lost':>6} {'p99 us':>8} {'time s':>7}",
          file=out)
    for r in records:
        m = r.get("metrics", {})
        p99 = (m.get("latency_us") or {}).get("p99")
        status = r["status"] + ("*" if r.get("flaky") else "")
        print(f"{r['scenario'][:32]:32} {status:8} {r['guest']['cpus']:>4} {m.get('rate', 0):>9.0f} "
              f"{str(m.get('lost', '-')):>6} {str(p99 if p99 is not None else '-'):>8} {r['duration']:>7.1f}", file=out)
        for v in r.get("invariants", []):
            if not v["ok"]:
                print(f"    x {v['name']}: {v['detail']}", file=out)
        if r["status"] == "error":
            print(f"    ! {r.get('error', '')[:200]}", file=out)
    flaky = [r for r in records if r.get("flaky")]
    if flaky:
        print("  * flaky: failed with a crashed guest, passed on retry", file=out)


def run_scenarios(lab: Lab, scenarios: list[Scenario], jobs: int, out_dir: Path, json_path: Path | None = None,
                  junit_path: Path | None = None, out=sys.stdout, report_path: Path | None = None,
                  plugin_config: PluginOptions | None = None) -> int:
    """Run ``scenarios`` on ``jobs`` guests in parallel; returns the exit status."""
    check_plugin_names(plugin_manager(plugin_config), scenarios)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = json_path or out_dir / "results.jsonl"
    log_dir = out_dir / "consoles"
    log_dir.mkdir(exist_ok=True)
    lab.image, lab.module  # noqa: B018 - build once, before the workers start
    environment = _environment(lab)
    print(f"cnlab run: {len(scenarios)} scenarios on {jobs} guest(s); kernel {environment['kernel']}, "
          f"accelerator {environment['accel']} ({environment['accel_reason']})", file=out)
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for scenario in scenarios:
        tasks.put((scenario, 1, False))
    parent = os.getpid()
    workers = [ctx.Process(target=_worker, daemon=True,
                           args=(i + 1, lab.options, plugin_config, str(log_dir), tasks, results, parent))
               for i in range(jobs)]
    for w in workers:
        w.start()
    final: dict[str, dict] = {}
    pending = {s.name: s for s in scenarios}
    started = time.monotonic()
    writer = ResultsWriter(json_path)
    try:
        while pending:
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
            record = payload | environment
            writer.write(record)
            if record["status"] == "error" and record["attempt"] == 1:
                print(f"[{elapsed:6.1f}s] guest {worker}: {name}: ERROR ({record['error'][:120]}); "
                      f"retrying on a fresh guest", file=out, flush=True)
                tasks.put((pending[name], 2, True))
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
        for _ in workers:
            tasks.put(None)
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
    records = [final[s.name] for s in scenarios if s.name in final]
    _print_summary(records, out)
    if junit_path is not None:
        write_junit(junit_path, records, environment)
    if report_path is not None:
        write_html(records, report_path)
    extras = [str(p) for p in (junit_path, report_path) if p is not None]
    print(f"results: {json_path}" + "".join(f", {p}" for p in extras), file=out)
    if pending:
        print(f"cnlab run: never ran: {', '.join(pending)}", file=out)
        return EXIT_NOT_RUN
    return EXIT_OK if all(r["status"] == "passed" for r in records) else EXIT_FAILED
