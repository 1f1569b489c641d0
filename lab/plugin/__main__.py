"""``python -m lab.plugin run``: one scenario through the plugin hooks on a fresh guest.

A stop-gap front end for the hook driver (:func:`lab.plugin.run_scenario`)
until the scenario engine calls the hooks itself::

    python -m lab.plugin run -e proc-events -c checker -f cpu-offline --cpus 2 \\
        --set proc-events.count=500 --json results/plugin-run.json

Exit status 0 when the scenario passed, 1 when it failed, 2 for bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
from pathlib import Path

from ..config import load_config
from ..console_scan import scan_console
from ..errors import LabError, UsageError
from ..guest import Guest
from ..labsetup import Lab, LabOptions
from ..qemu_argv import GuestShape
from .driver import guest_setup_args, run_scenario
from .manager import call_hook, get_plugin_manager
from .model import ScenarioInfo


def _setting(text: str) -> tuple[str, str, object]:
    target, sep, value = text.partition("=")
    name, dot, key = target.rpartition(".")
    if not sep or not dot or not name or not key:
        raise argparse.ArgumentTypeError(f"--set wants NAME.KEY=VALUE, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return name, key, parsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.plugin")
    ap.add_argument("-p", dest="plugin_args", action="append", default=[])
    ap.add_argument("--plugins-dir", dest="plugins_dir", type=Path, action="append", default=[])
    ap.add_argument("--config", type=Path)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("-e", "--emulator", action="append", default=[])
    run.add_argument("-c", "--consumer", action="append", default=[])
    run.add_argument("-f", "--fault", action="append", default=[])
    run.add_argument("--set", type=_setting, action="append", default=[], metavar="NAME.KEY=VALUE")
    run.add_argument("--name", default="plugin-scenario")
    run.add_argument("--cpus", type=int, default=2)
    run.add_argument("--mem", type=int, default=1024)
    run.add_argument("--accel", default="auto")
    run.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    try:
        pm = get_plugin_manager(load_config(args.config, plugin_args=args.plugin_args, plugins_dirs=args.plugins_dir))
        params: dict[str, dict] = {}
        for name, key, value in args.set:
            params.setdefault(name, {})[key] = value
        scenario = ScenarioInfo(args.name, tuple(args.emulator), tuple(args.consumer), tuple(args.fault),
                                cpus=args.cpus, params=params)
        for kind, names in (("emulators", scenario.emulators), ("consumers", scenario.consumers),
                            ("faults", scenario.faults)):
            for name in names:
                getattr(pm.registries, kind).get(name)
        shape = GuestShape(cpus=args.cpus, memory_mb=args.mem)
        cmdline, qemu = guest_setup_args(pm, shape)
        lab = Lab(LabOptions(accel=args.accel))
        spec = dataclasses.replace(lab.guest_spec(shape, name="plugins", cmdline=cmdline), qemu_extra=qemu)
        print(f"cnlab: {shape.cpus}-vCPU guest under {spec.accel.name}", file=sys.stderr)
        with Guest(spec) as guest:
            result = run_scenario(pm, guest, scenario)
            console = guest.console_text()
        kernel_reports = scan_console(console)
        if kernel_reports:
            problems = result.problems + tuple(f"console: {r.kind}: {r.title}" for r in kernel_reports)
            result = dataclasses.replace(result, passed=False, problems=problems)
        status = pm.hook.lab_report_status(result=result)
        print(f"{status:<6} {scenario.name}" + (f": {result.error}" if result.error else ""))
        for problem in result.problems:
            print(f"  problem: {problem}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"scenario": dataclasses.asdict(scenario), "status": status,
                                             "passed": result.passed, "error": result.error,
                                             "problems": list(result.problems), "data": result.data,
                                             "kernel_reports": [r.to_dict() for r in kernel_reports],
                                             "console_tail": console.splitlines()[-60:]},
                                            indent=2, default=str) + "\n")
        if args.json:
            call_hook(pm, "lab_report_write", results=[result], directory=args.json.parent)
        pm.unconfigure()
        return 0 if result.passed else 1
    except UsageError as exc:
        print(f"cnlab: error: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"cnlab: error: {str(exc).partition(chr(10))[0]}", file=sys.stderr)
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
