"""The ``cnlab`` command line.

Every user error ends in one line on stderr (``cnlab: error: …``) and exit
status 2; a failing guest command passes its own exit status through.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lab import __version__
from lab.cli.progress import NORMAL, QUIET, progress_output
from lab.config import KERNEL_FLAVOURS
from lab.errors import GuestError, LabError, UsageError
from lab.guest.accel import TCG_THREADS
from lab.guest.qemu_argv import GuestShape

if TYPE_CHECKING:
    from lab.guest.labsetup import Lab

# Lab and Guest (paramiko, qemu.qmp) are imported where used: "cnlab doctor" runs on the system
# Python before the virtual environment exists.

__all__ = ["main", "build_parser"]

log = logging.getLogger("lab")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input in one line, with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    return value


def _put_spec(text: str) -> tuple[Path, str]:
    source, sep, dest = text.partition(":")
    if not sep or not source or not dest.startswith("/"):
        raise argparse.ArgumentTypeError(f"--put wants SRC:/ABSOLUTE/DST, got {text!r}")
    if not Path(source).is_file():
        raise argparse.ArgumentTypeError(f"--put source not found: {source}")
    return Path(source), dest


def _module_dir(text: str) -> Path:
    folder = Path(text)
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"--module {text}: not a directory")
    if not ((folder / "Kbuild").is_file() or (folder / "Makefile").is_file()):
        raise argparse.ArgumentTypeError(f"--module {text}: no Kbuild or Makefile (a kernel module's sources)")
    return folder


def _add_modules(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--module", dest="modules", type=_module_dir, action="append", default=[], metavar="DIR",
                        help="build the kernel module in DIR against the guest kernel and the lab module (it may "
                             "call cbus_insert()) and load it after cnlab.ko (repeatable)")


def _add_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpus", type=_positive_int, default=2, help="vCPUs (1-8, default 2)")
    parser.add_argument("--mem", type=_positive_int, default=1024, help="memory in MB (default 1024)")
    parser.add_argument("--no-module", action="store_true", help="do not deliver or load the lab module")
    parser.add_argument("--append", action="append", default=[], metavar="ARG",
                        help="extra kernel command-line argument (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnlab", description="QEMU lab for the Linux netlink connector and CBUS.")
    parser.add_argument("--version", action="version", version=f"cnlab {__version__}")
    parser.add_argument("--cache", type=Path, help="cache directory (default $CNLAB_CACHE or ~/.cache/cnlab)")
    parser.add_argument("--kernel", type=Path, help="bring your own bzImage instead of Debian's cloud kernel")
    parser.add_argument("--kbuild", type=Path, help="build tree of --kernel (to build the module against)")
    parser.add_argument("--kernel-modules", type=Path, help="/lib/modules/<release> of --kernel")
    parser.add_argument("--kernel-flavour", choices=KERNEL_FLAVOURS, default=None,
                        help="cloud: Debian's cloud kernel (default); debug: built from linux-source-6.1 with "
                             "lockdep, KASAN, kmemleak, debug objects and fault injection; kcsan: the same source "
                             "with KCSAN, the data-race detector (each tens of minutes cold, then cached; "
                             "default from the config's [lab] kernel_flavour)")
    parser.add_argument("--kmod", type=Path, metavar="DIR",
                        help="build the lab module from DIR (a patched copy of kmod/) instead of this checkout's")
    parser.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto",
                        help="accelerator (auto: KVM if it really works, else TCG)")
    parser.add_argument("--tcg-threads", choices=list(TCG_THREADS), default="auto",
                        help="TCG: a host thread per vCPU (multi) or per guest (single); auto: multi while "
                             "the vCPUs of the guests running at once fit the host's cores")
    parser.add_argument("--no-snapshot", action="store_true",
                        help="boot every guest cold instead of restoring a saved state of its shape")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="count", default=0,
                          help="also log what cnlab does (-vv: in detail)")
    loudness.add_argument("-q", "--quiet", action="store_true",
                          help="no progress: only what a run is about, warnings, errors and results")
    parser.add_argument("-p", dest="plugin_args", action="append", default=[], metavar="NAME",
                        help="load plugin NAME (module or entry point); -p no:NAME blocks one")
    parser.add_argument("--plugins-dir", type=Path, action="append", default=[], metavar="DIR",
                        help="load every *.py in DIR as a plugin (repeatable)")
    parser.add_argument("--config", type=Path, default=None, help="lab config (TOML; default ./cnlab.toml if present)")
    parser.add_argument("--package", dest="packages", action="append", default=[], metavar="NAME",
                        help="add Debian package NAME to the guest root disk, after the config's [lab] packages "
                             "(repeatable; each list of packages gets its own cached root disk)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    image = sub.add_parser("image", help="guest image commands")
    image_sub = image.add_subparsers(dest="image_command", metavar="ACTION", parser_class=_Parser)
    image_sub.required = True
    build = image_sub.add_parser("build", help="build whatever is missing (kernel, disks, initramfs, module)")
    build.add_argument("--no-module", action="store_true", help="skip the module build")

    run_exec = sub.add_parser("exec", help="boot a fresh guest, run COMMAND, tear it down")
    _add_shape(run_exec)
    _add_modules(run_exec)
    run_exec.add_argument("--put", type=_put_spec, action="append", default=[], metavar="SRC:DST",
                          help="copy a file into the guest first (repeatable)")
    run_exec.add_argument("--timeout", type=float, default=None, help="command timeout in seconds")
    run_exec.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND...")

    shell = sub.add_parser("shell", help="boot a guest and open an interactive shell")
    _add_shape(shell)
    _add_modules(shell)

    sub.add_parser("plugins", help="list loaded plugins, and every object with its parameters")

    check = sub.add_parser("check", help="validate scenarios and print what each would run, without booting")
    check.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                       help="scenario files or built-in names (default: the quick set)")
    check.add_argument("--set", dest="scenario_set", default="quick", help="built-in set when none is named")

    report = sub.add_parser("report", help="HTML report of a results file (JSON lines), or of many runs' history")
    report.add_argument("results", type=Path, nargs="?", metavar="RESULTS")
    report.add_argument("--history", type=Path, nargs="+", metavar="DIR", default=None,
                        help="result folders of many runs (cnlab run --out DIR), oldest first: per scenario its "
                             "pass rate, flakiness and figures over the runs")
    report.add_argument("-o", "--output", type=Path, default=None,
                        help="HTML file (default RESULTS.html; with --history: history.html)")

    run = sub.add_parser("run", help="run scenarios on N guests in parallel (default: the quick set)")
    run.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                     help="scenario files or built-in names (default: the quick set)")
    run.add_argument("-n", "--jobs", type=_positive_int, default=None, help="guests in parallel (default 2)")
    _add_modules(run)
    run.add_argument("--set", dest="scenario_set", default="quick", help="built-in set when none is named")
    run.add_argument("--out", type=Path, default=None, help="results folder (default results/run-TIME)")
    run.add_argument("--json", type=Path, help="JSON-lines results file (default OUT/results.jsonl)")
    run.add_argument("--junit", type=Path, help="also write JUnit XML")
    run.add_argument("--report", type=Path, help="also write an HTML report")
    run.add_argument("--smoke", action="store_true", help="only the connector echo smoke check")
    run.add_argument("--shard", metavar="K/N", default=None,
                     help="run only shard K of N: a part of the selection balanced by expected durations "
                          "(merge the shards' results with cnlab merge)")
    run.add_argument("--durations", type=Path, metavar="FILE", default=None,
                     help="with --shard: expected durations from FILE ({name: seconds}, as cnlab merge writes "
                          "durations.json) instead of the cache's remembered ones")
    run.add_argument("--hosts", default=None, metavar="USER@HOST,...",
                     help="spread the scenarios over these hosts through pytest-xdist SSH workers (each runs -n "
                          "guests from its own cache); every host is checked first")
    run.add_argument("--ssh-config", type=Path, default=None, metavar="FILE",
                     help="with --hosts: ssh config to include (aliases, users, keys)")
    run.add_argument("--known-hosts", type=Path, default=None, metavar="FILE",
                     help="with --hosts: the hosts' pinned keys (default: ssh's own known_hosts); never trusted "
                          "on first use")
    run.add_argument("--remote-python", default=None, metavar="PATH",
                     help="with --hosts: the Python with cnlab on the hosts (default: this one's path)")

    shrink = sub.add_parser("shrink", help="reduce a failing scenario to a smaller one that fails the same way")
    shrink.add_argument("scenario", metavar="SCENARIO", help="a scenario file or built-in name that fails")
    shrink.add_argument("-o", "--output", type=Path, default=None, metavar="OUT.toml",
                        help="where to write the shrunk scenario (default ./NAME-shrunk.toml)")
    shrink.add_argument("--max-runs", type=_positive_int, default=None, metavar="N",
                        help="most guest runs, the original's included (default 40)")
    shrink.add_argument("--budget", type=_seconds, default=None, metavar="SECONDS",
                        help="start no run after this many seconds (default 1200)")
    shrink.add_argument("--out", type=Path, default=None,
                        help="folder for every run's scenario, results and consoles (default results/shrink-TIME)")
    _add_modules(shrink)

    merge = sub.add_parser("merge", help="merge the results of a run's shards: one results file, JUnit, HTML")
    merge.add_argument("results", nargs="+", type=Path, metavar="RESULTS", help="each shard's results.jsonl")
    merge.add_argument("--out", type=Path, default=None, help="folder for the merged files (default "
                                                                "results/merge-TIME)")
    merge.add_argument("--json", type=Path, help="merged JSON-lines file (default OUT/results.jsonl)")
    merge.add_argument("--junit", type=Path, help="JUnit XML (default OUT/junit.xml)")
    merge.add_argument("--report", type=Path, help="HTML report (default OUT/report.html)")

    cache = sub.add_parser("cache", help="list the cache's artefacts (kind, size, age, last use); prune it")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION", parser_class=_Parser)
    cache_sub.add_parser("list", help="the artefacts by kind (the default)")
    prune = cache_sub.add_parser("prune", help="remove artefacts no running lab holds")
    prune.add_argument("--keep-last", type=_count, default=1, metavar="N",
                       help="keep the N last used artefacts of each kind, root disks of each list of extra "
                            "packages (default 1; 0 keeps none)")
    prune.add_argument("--older-than", type=_duration, default=None, metavar="D",
                       help="remove only artefacts last used longer ago than D (30m, 12h, 7d, 2w)")
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")

    debug = sub.add_parser("debug", help="the lab module's state in a guest's vmcore (drgn)")
    debug.add_argument("vmcore", type=Path, help="a dump the lab wrote when a guest panicked")
    debug.add_argument("--module", type=Path, action="append", default=[],
                       help="the module's unstripped .ko (default: the one named in VMCORE.json)")
    debug.add_argument("--json", action="store_true", help="print JSON instead of text")
    trace = sub.add_parser("trace", help="the flight recorder's trace of each failed scenario: its last milliseconds")
    trace.add_argument("results", type=Path, help="a results file (JSON lines) or a run's folder")
    trace.add_argument("--scenario", default=None, help="only this scenario")
    trace.add_argument("--ms", type=float, default=5.0, help="milliseconds before the failure (default 5)")
    trace.add_argument("--lines", type=_positive_int, default=200, help="at most this many events (default 200)")
    sub.add_parser("doctor", help="the host as cnlab sees it; exits 1 with a fix for each problem")

    from lab.cli.mutate import add_mutate_parser

    add_mutate_parser(sub, _Parser, _positive_int)

    bench = sub.add_parser("bench", help="benchmarks (print a table, write JSON)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", parser_class=_Parser)
    bench_sub.required = True
    boot = bench_sub.add_parser("boot", help="boot-to-SSH-ready against the boot floor")
    boot.add_argument("--runs", type=_positive_int, default=5, help="boots of each kind (at least 5)")
    boot.add_argument("--cpus", type=_positive_int, default=2)
    boot.add_argument("--json", type=Path, default=Path("results/bench-boot.json"))
    suite = bench_sub.add_parser("suite", help="the quick set with -n 1 and -n 2: wall times, ratio, overhead")
    suite.add_argument("--json", type=Path, default=Path("results/bench-suite.json"))
    suite.add_argument("--runs", type=int, default=1, choices=range(1, 11), metavar="N",
                       help="pairs of runs (-n 1 then -n 2), interleaved; medians printed (1-10, default 1)")
    suite.add_argument("--out", type=Path, help="keep both runs' results and consoles here (default: a temporary "
                                                "folder, kept as results/bench-suite-TIME if a scenario failed)")
    faults = bench_sub.add_parser("faults", help="how late faults fire after their trigger (at, every, on, host)")
    faults.add_argument("--runs", type=_positive_int, default=1, help="fresh guests, one after another")
    faults.add_argument("--json", type=Path, default=Path("results/bench-faults.json"))
    dbg = bench_sub.add_parser("debug", help="module build with and without debug info; a panicked guest's vmcore: "
                                             "size, seconds to write and to read")
    dbg.add_argument("--runs", type=_positive_int, default=3, help="builds of each kind")
    dbg.add_argument("--mem", type=_positive_int, default=512, help="the panicking guest's RAM in MiB")
    dbg.add_argument("--json", type=Path, default=Path("results/bench-debug.json"))
    kmod = bench_sub.add_parser("kmod", help="cbus_insert against a direct send, rates and latency")
    kmod.add_argument("--cpus", type=_positive_int, default=2)
    kmod.add_argument("--runs", type=_positive_int, default=1,
                      help="measure in this many fresh guests, one after another, and compare them")
    kmod.add_argument("--json", type=Path, default=Path("results/bench-kmod.json"))
    return parser


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None


def _count(text: str) -> int:
    value = _positive_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _duration(text: str) -> float:
    from lab.cli.cache_cmd import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lab(args: argparse.Namespace, extra_modules: tuple[Path, ...] = (), pm=None) -> Lab:
    """The lab of the command line; its root disk has the guest packages of the config, ``--package`` and the
    plugins (``lab_guest_packages_add``; ``pm``, or a manager of its own)."""
    from lab.guest.labsetup import Lab, LabOptions

    if args.kmod is not None and not (args.kmod / "Makefile").is_file():
        raise UsageError(f"--kmod {args.kmod}: not a module source folder (no Makefile)")
    packages = _guest_packages(args, pm)
    if packages:
        log.info("extra guest packages: %s", ", ".join(packages))
    flavour = _kernel_flavour(args)
    return Lab(LabOptions(cache=args.cache, kernel=args.kernel, kbuild=args.kbuild,
                          kernel_modules=args.kernel_modules, accel=args.accel,
                          tcg_threads=args.tcg_threads, module_source=args.kmod, extra_modules=extra_modules,
                          snapshot=not args.no_snapshot, packages=packages, kernel_flavour=flavour))


def _kernel_flavour(args: argparse.Namespace) -> str:
    """``--kernel-flavour``, else the config's ``[lab] kernel_flavour``, else cloud; not with ``--kernel``."""
    from lab.config import config_from_args

    flavour = getattr(args, "kernel_flavour", None) or config_from_args(args).kernel_flavour
    if flavour != "cloud" and args.kernel is not None:
        raise UsageError(f"--kernel-flavour {flavour} builds its own kernel; it cannot be combined with --kernel")
    return flavour


def _guest_packages(args: argparse.Namespace, pm=None) -> tuple[str, ...]:
    """``[lab] packages``, ``--package`` and the plugins' (``lab_guest_packages_add``), sorted, each once."""
    from lab.engine.hooks import guest_packages

    own = pm is None
    if own:
        from lab.engine.run import plugin_manager

        pm = plugin_manager(_plugin_options(args))
    try:
        return guest_packages(pm)
    finally:
        if own:
            pm.unconfigure()


def _module_folders(args: argparse.Namespace, pm=None) -> tuple[Path, ...]:
    """``--module`` folders, then the plugins' (``lab_kernel_modules_add``), each once."""
    from lab.engine.hooks import kernel_module_dirs

    own = pm is None
    if own:
        from lab.engine.run import plugin_manager

        pm = plugin_manager(_plugin_options(args))
    try:
        folders = dict.fromkeys(Path(f).resolve() for f in getattr(args, "modules", ()))
        folders.update(dict.fromkeys(kernel_module_dirs(pm)))
    finally:
        if own:
            pm.unconfigure()
    return tuple(folders)


def _lab_with_modules(args: argparse.Namespace, pm=None) -> Lab:
    """The lab with every extra module built now (warnings shown), so a build error stops before a boot."""
    own = pm is None
    if own:  # one manager for the modules and the packages the plugins declare
        from lab.engine.run import plugin_manager

        pm = plugin_manager(_plugin_options(args))
    try:
        folders = () if getattr(args, "no_module", False) else _module_folders(args, pm)
        lab = _lab(args, folders, pm)
    finally:
        if own:
            pm.unconfigure()
    if not folders:
        return lab
    for module in lab.extra_modules:
        for line in module.warnings:
            log.warning("module %s: %s", module.name, line)
    if lab.extra_modules:
        log.info("extra modules, in load order after cnlab: %s", ", ".join(m.name for m in lab.extra_modules))
    return lab


def _shape(args: argparse.Namespace) -> GuestShape:
    return GuestShape(cpus=args.cpus, memory_mb=args.mem)


def cmd_image_build(args: argparse.Namespace) -> int:
    lab = _lab(args)
    image = lab.image
    if not args.no_module:
        lab.module  # noqa: B018 - built (or found) now, under the progress view
    args.view.stop()
    manifest = image.manifest()
    print(f"kernel    {manifest['kernel']['release']} ({manifest['kernel']['source']} "
          f"{manifest['kernel']['package_version']})")
    print(f"rootfs    {image.rootfs}")
    print(f"initramfs {image.initramfs}")
    print(f"boots     {image.boot_kernel} ({manifest.get('boot', 'bzImage')})")
    print(f"manifest  {image.manifest_path}")
    if not args.no_module:
        print(f"module    {lab.module.module('cnlab')} (sources {lab.module.source_hash})")
    return 0


def _stream(stream: str, chunk: bytes) -> None:
    target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    target.write(chunk)
    target.flush()


def cmd_exec(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("cnlab exec: no command given (cnlab exec [OPTIONS] -- COMMAND...)")
    from lab.guest.files import install_guest_programs
    from lab.guest.machine import Guest

    shape = _shape(args)
    lab = _lab_with_modules(args)
    spec = lab.guest_spec(shape, name="exec", with_module=not args.no_module, cmdline=tuple(args.append))
    print(f"cnlab: {shape.cpus}-vCPU guest under {spec.accel.label} ({spec.accel.reason})", file=sys.stderr)
    with Guest(spec) as guest:
        install_guest_programs(guest)  # cnlabctl on the PATH
        for source, dest in args.put:
            guest.ssh.put(source, dest, mode=source.stat().st_mode & 0o777)
        result = guest.run(argv, timeout=args.timeout, sink=_stream)
    if result.extra.get("timed_out"):
        raise GuestError(f"command timed out after {args.timeout} s: {argv[0]}")
    return result.exit_status


def cmd_shell(args: argparse.Namespace) -> int:
    from lab.guest.files import install_guest_programs
    from lab.guest.machine import Guest

    shape = _shape(args)
    lab = _lab_with_modules(args)
    spec = lab.guest_spec(shape, name="shell", with_module=not args.no_module, cmdline=tuple(args.append))
    ssh = shutil.which("ssh")
    if ssh is None:
        raise UsageError("cnlab shell needs the ssh client: apt-get install openssh-client")
    print(f"cnlab: booting a {shape.cpus}-vCPU guest under {spec.accel.label} …", file=sys.stderr)
    with Guest(spec) as guest, tempfile.TemporaryDirectory(prefix="cnlab-shell-") as tmp:
        install_guest_programs(guest)  # cnlabctl on the PATH
        keys = spec.image.keys
        pinned = Path(tmp) / "known_hosts"
        host_key = keys.host_pub.read_text().split()[:2]
        pinned.write_text(f"[127.0.0.1]:{guest.ssh_port} {' '.join(host_key)}\n")
        argv = [ssh, "-i", str(keys.client_key), "-o", f"UserKnownHostsFile={pinned}",
                "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
                "-p", str(guest.ssh_port), "root@127.0.0.1"]
        return subprocess.call(argv)


def _plugin_options(args: argparse.Namespace):
    from lab.config import DEFAULT_CONFIG_NAME
    from lab.engine.run import PluginOptions

    config_path = args.config or (Path(DEFAULT_CONFIG_NAME) if Path(DEFAULT_CONFIG_NAME).exists() else None)
    return PluginOptions(config_path, tuple(args.plugin_args), tuple(args.plugins_dir), tuple(args.packages))


def _scenarios(args: argparse.Namespace):
    """The plugin options and every named scenario, read and planned: bad input fails here, before any boot."""
    from lab.engine.run import plugin_manager
    from lab.engine.sets import resolve_scenarios

    options = _plugin_options(args)
    pm = plugin_manager(options)
    return options, pm, resolve_scenarios(args.scenarios, pm.registries, args.scenario_set)


def cmd_check(args: argparse.Namespace) -> int:
    from lab.cli.check import check_scenarios

    _, pm, scenarios = _scenarios(args)
    try:
        return check_scenarios(pm, scenarios, sys.stdout)
    finally:
        pm.unconfigure()


def cmd_run(args: argparse.Namespace) -> int:
    if args.smoke:
        from lab.cli.smoke import run_smoke

        return run_smoke(_lab_with_modules(args), args.json)
    import time as _time

    from lab.engine.run import run_scenarios
    from lab.report.summary import finish_run

    if args.durations is not None and args.shard is None:
        raise UsageError("cnlab run: --durations goes with --shard K/N")
    if args.hosts is not None:
        return _run_on_hosts(args)
    shard = None
    if args.shard is not None:
        from lab.engine.shard import parse_shard

        shard = parse_shard(args.shard)
    plugin_config, pm, scenarios = _scenarios(args)
    try:
        lab, extra = _lab_with_modules(args, pm), None
    finally:
        pm.unconfigure()  # the run builds its own managers (and unconfigures them)
    jobs = args.jobs or min(2, os.cpu_count() or 1)
    if jobs < 1 or jobs > 16:
        raise UsageError("cnlab run: -n must be between 1 and 16")
    out_dir = args.out or Path("results") / _time.strftime("run-%Y%m%d-%H%M%S")
    if shard is not None:
        from lab.cli.shards import select_shard

        scenarios, extra = select_shard(shard, scenarios, lab.cache, args.durations)
        if not scenarios:
            args.view.stop()
            out_dir.mkdir(parents=True, exist_ok=True)
            (args.json or out_dir / "results.jsonl").touch()
            print(f"cnlab run: shard {shard} has no scenarios (the selection is smaller than the shard count)")
            return 0
    sharded = {"environment_extra": extra} if extra else {}
    outcome = run_scenarios(lab, scenarios, min(jobs, len(scenarios)), out_dir, args.json,
                            plugin_config=plugin_config, on_event=args.view.run_event, **sharded)
    args.view.stop()
    return finish_run(outcome, sys.stdout, args.junit, args.report)


def cmd_shrink(args: argparse.Namespace) -> int:
    import time as _time

    from lab.cli.shrink import check_limits, read_scenario_dict, shrink_scenario, shrunk_name
    from lab.engine.shrink import DEFAULT_BUDGET, DEFAULT_MAX_RUNS, engine_runner, engine_validator

    max_runs = DEFAULT_MAX_RUNS if args.max_runs is None else args.max_runs
    budget = DEFAULT_BUDGET if args.budget is None else args.budget
    check_limits(max_runs, budget)
    args.scenarios, args.scenario_set = [args.scenario], "quick"
    plugin_config, pm, (scenario,) = _scenarios(args)
    try:
        data = read_scenario_dict(scenario.source)
        data["name"] = shrunk_name(scenario.name)
        output = args.output or Path(f"{data['name']}.toml")
        if output.resolve() == Path(scenario.source).resolve():
            raise UsageError(f"cnlab shrink: -o {output} is the scenario itself; name another file")
        registries = pm.registries
        validate = engine_validator(registries)
        if (problem := validate(data)) is not None:
            raise UsageError(f"cnlab shrink: {problem}")
        lab = _lab_with_modules(args, pm)
    finally:
        pm.unconfigure()  # each run builds its own managers
    work_dir = args.out or Path("results") / _time.strftime("shrink-%Y%m%d-%H%M%S")
    args.view.stop()
    print(f"cnlab shrink: {scenario.source} (runs as {data['name']}): at most {max_runs} runs and "
          f"{budget:g} s; every run's files in {work_dir}/", flush=True)
    runner = engine_runner(lab, registries, plugin_config, work_dir,
                           on_note=lambda text: print(f"     {text}", flush=True))
    return shrink_scenario(data, scenario.source, output, runner, validate, registries, max_runs, budget,
                           sys.stdout, sys.stderr)


def _run_on_hosts(args: argparse.Namespace) -> int:
    import time as _time

    from lab.cli.distributed import remote_python_default, run_on_hosts
    from lab.report.summary import finish_run

    if args.shard is not None or args.smoke:
        raise UsageError("cnlab run: --hosts does not go with --shard or --smoke")
    if args.modules:
        raise UsageError("cnlab run: --hosts does not go with --module (each host builds its own lab module)")
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if not hosts or len(set(hosts)) != len(hosts):
        raise UsageError(f"cnlab run: --hosts wants distinct USER@HOST names separated by commas, got {args.hosts!r}")
    plugin_config, pm, scenarios = _scenarios(args)
    pm.unconfigure()
    jobs = args.jobs or 1
    if jobs < 1 or jobs > 16:
        raise UsageError("cnlab run: -n must be between 1 and 16")
    out_dir = args.out or Path("results") / _time.strftime("run-%Y%m%d-%H%M%S")
    outcome = run_on_hosts(hosts, scenarios, plugin_config, _lab(args), out_dir, args.json, args.ssh_config,
                           args.known_hosts, args.remote_python or remote_python_default(), jobs,
                           args.view.run_event)
    args.view.stop()
    return finish_run(outcome, sys.stdout, args.junit, args.report)


def cmd_report(args: argparse.Namespace) -> int:
    from lab.engine.results import final_records, read_results
    from lab.report.html import write_html

    if args.history is not None:
        return _report_history(args)
    if args.results is None:
        raise UsageError("cnlab report: name a results file, or result folders with --history DIR...")
    if not args.results.is_file():
        raise UsageError(f"cnlab report: no such results file: {args.results}")
    try:
        records = final_records(read_results(args.results))
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"cnlab report: {args.results}: not a cnlab results file ({exc})") from None
    if not records:
        raise UsageError(f"cnlab report: {args.results} holds no results")
    output = args.output or args.results.with_suffix(".html")
    write_html(records, output)
    print(f"wrote {output} ({len(records)} scenarios)")
    return 0


def _report_history(args: argparse.Namespace) -> int:
    from lab.report.history import build_history, load_runs, print_history, write_history_html

    if args.results is not None:
        raise UsageError(f"cnlab report: --history takes result folders only; {args.results} is extra "
                         "(name it after --history if it is one)")
    runs = load_runs(args.history)
    histories = build_history(runs)
    print_history(runs, histories, sys.stdout)
    output = args.output or Path("history.html")
    write_history_html(runs, histories, output)
    print(f"wrote {output} ({len(histories)} scenarios over {len(runs)} runs)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    import time as _time

    from lab.cli.shards import merge_command

    out_dir = args.out or Path("results") / _time.strftime("merge-%Y%m%d-%H%M%S")
    return merge_command(args.results, out_dir, args.json, args.junit, args.report, sys.stdout)


def cmd_bench_boot(args: argparse.Namespace) -> int:
    from lab.bench.boot import run_boot_bench

    if args.runs < 5:
        raise UsageError("cnlab bench boot: --runs must be at least 5")
    return run_boot_bench(_lab(args), runs=args.runs, shape=GuestShape(cpus=args.cpus), json_path=args.json)


def cmd_bench_suite(args: argparse.Namespace) -> int:
    import time

    from lab.bench.suite import run_suite_bench

    if args.out is not None:
        if args.out.exists() and any(args.out.iterdir()):
            raise UsageError(f"cnlab bench suite: --out {args.out} is not empty (its results would be counted)")
        return run_suite_bench(_lab(args), args.json, args.out, args.runs)
    with tempfile.TemporaryDirectory(prefix="cnlab-suite-") as tmp:
        status = 1
        try:
            status = run_suite_bench(_lab(args), args.json, Path(tmp), args.runs)
        finally:
            if status:  # a failed scenario, or the bench itself failed: keep what there is
                kept = Path("results") / time.strftime("bench-suite-%Y%m%d-%H%M%S")
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(tmp, kept)
                print(f"results and consoles of both runs kept in {kept}")
        return status


def cmd_bench_faults(args: argparse.Namespace) -> int:
    import tempfile

    from lab.bench.faults import run_fault_bench

    with tempfile.TemporaryDirectory(prefix="cnlab-faults-") as tmp:
        return run_fault_bench(_lab(args), args.json, Path(tmp), runs=args.runs)


def cmd_bench_debug(args: argparse.Namespace) -> int:
    from lab.bench.debug import run_debug_bench

    return run_debug_bench(_lab(args), args.json, runs=args.runs, memory_mb=args.mem)


def cmd_bench_kmod(args: argparse.Namespace) -> int:
    from lab.bench.kmod import run_kmod_bench

    return run_kmod_bench(_lab(args), shape=GuestShape(cpus=args.cpus), json_path=args.json, runs=args.runs)


def cmd_cache(args: argparse.Namespace) -> int:
    from lab.cli.cache_cmd import list_cache, prune_cache
    from lab.host.cache import cache_root

    root = (args.cache or cache_root()).expanduser()
    if args.cache_command == "prune":
        return prune_cache(root, args.keep_last, args.older_than, args.dry_run, sys.stdout)
    return list_cache(root, sys.stdout)


def cmd_doctor(args: argparse.Namespace) -> int:
    from lab.cli.doctor import HostProbe, print_findings, run_checks
    from lab.host.cache import cache_root

    probe = HostProbe((args.cache or cache_root()).expanduser(), custom_kernel=args.kernel)
    return print_findings(run_checks(probe, args.tcg_threads, args.accel), sys.stdout)


def cmd_debug(args: argparse.Namespace) -> int:
    from lab.cli.debug import debug_vmcore

    return debug_vmcore(args.vmcore, args.module, args.json, sys.stdout)


def cmd_trace(args: argparse.Namespace) -> int:
    from lab.cli.trace import print_traces

    if not 0 < args.ms <= 60000:
        raise UsageError(f"cnlab trace: --ms must be more than 0 and at most 60000, got {args.ms:g}")
    return print_traces(args.results, args.scenario, args.ms, args.lines, sys.stdout)


def cmd_mutate(args: argparse.Namespace) -> int:
    from lab.cli.mutate import mutate_command

    return mutate_command(args, _lab)


def cmd_plugins(args: argparse.Namespace) -> int:
    from lab.cli.plugins import list_plugins

    return list_plugins(args)


COMMANDS = {
    ("image", "build"): cmd_image_build,
    ("exec", None): cmd_exec,
    ("shell", None): cmd_shell,
    ("run", None): cmd_run,
    ("plugins", None): cmd_plugins,
    ("check", None): cmd_check,
    ("shrink", None): cmd_shrink,
    ("cache", None): cmd_cache,
    ("cache", "list"): cmd_cache,
    ("cache", "prune"): cmd_cache,
    ("doctor", None): cmd_doctor,
    ("debug", None): cmd_debug,
    ("trace", None): cmd_trace,
    ("mutate", None): cmd_mutate,
    ("report", None): cmd_report,
    ("merge", None): cmd_merge,
    ("bench", "boot"): cmd_bench_boot,
    ("bench", "kmod"): cmd_bench_kmod,
    ("bench", "suite"): cmd_bench_suite,
    ("bench", "faults"): cmd_bench_faults,
    ("bench", "debug"): cmd_bench_debug,
}


def _terminate(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


#: Commands whose stdout carries a guest's output or terminal: their progress goes to stderr, as plain lines.
_GUEST_TERMINAL = ("exec", "shell")
#: Commands with long steps worth a live view on a terminal (the benchmarks print their own tables as they go).
_LIVE = ("image", "run")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cnlab`` command."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        args = build_parser().parse_args(argv)
        verbosity = QUIET if args.quiet else NORMAL + args.verbose
        logging.getLogger("paramiko").setLevel(logging.WARNING)
        # qemu.qmp logs a dying guest's closed socket as an ERROR; cnlab reports that itself.
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
        sub = (getattr(args, "image_command", None) or getattr(args, "bench_command", None)
               or getattr(args, "cache_command", None))
        stream = sys.stderr if args.command in _GUEST_TERMINAL else sys.stdout
        with progress_output(stream, verbosity, live=args.command in _LIVE) as args.view:
            return COMMANDS[(args.command, sub)](args)
    except LabError as exc:
        first, _, rest = str(exc).partition("\n")
        print(f"cnlab: error: {first}", file=sys.stderr)
        if isinstance(exc, GuestError) and rest:
            print(rest, file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("cnlab: interrupted", file=sys.stderr)
        return 130


def json_dump(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.chmod(path, 0o644)
