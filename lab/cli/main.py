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

from lab import __version__
from lab.errors import GuestError, LabError, UsageError
from lab.guest.accel import TCG_THREADS
from lab.guest.labsetup import Lab, LabOptions
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape

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
    parser.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto",
                        help="accelerator (auto: KVM if it really works, else TCG)")
    parser.add_argument("--tcg-threads", choices=list(TCG_THREADS), default="auto",
                        help="TCG: a host thread per vCPU (multi) or per guest (single); auto: multi while "
                             "the vCPUs of the guests running at once fit the host's cores")
    parser.add_argument("--no-snapshot", action="store_true",
                        help="boot every guest cold instead of restoring a saved state of its shape")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what cnlab does")
    parser.add_argument("-p", dest="plugin_args", action="append", default=[], metavar="NAME",
                        help="load plugin NAME (module or entry point); -p no:NAME blocks one")
    parser.add_argument("--plugins-dir", type=Path, action="append", default=[], metavar="DIR",
                        help="load every *.py in DIR as a plugin (repeatable)")
    parser.add_argument("--config", type=Path, default=None, help="lab config (TOML; default ./cnlab.toml if present)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    image = sub.add_parser("image", help="guest image commands")
    image_sub = image.add_subparsers(dest="image_command", metavar="ACTION", parser_class=_Parser)
    image_sub.required = True
    build = image_sub.add_parser("build", help="build whatever is missing (kernel, disks, initramfs, module)")
    build.add_argument("--no-module", action="store_true", help="skip the module build")

    run_exec = sub.add_parser("exec", help="boot a fresh guest, run COMMAND, tear it down")
    _add_shape(run_exec)
    run_exec.add_argument("--put", type=_put_spec, action="append", default=[], metavar="SRC:DST",
                          help="copy a file into the guest first (repeatable)")
    run_exec.add_argument("--timeout", type=float, default=None, help="command timeout in seconds")
    run_exec.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND...")

    shell = sub.add_parser("shell", help="boot a guest and open an interactive shell")
    _add_shape(shell)

    sub.add_parser("plugins", help="list loaded plugins: name, kind, source, hooks")

    report = sub.add_parser("report", help="HTML report of a results file (JSON lines)")
    report.add_argument("results", type=Path, metavar="RESULTS")
    report.add_argument("-o", "--output", type=Path, default=None, help="HTML file (default RESULTS.html)")

    run = sub.add_parser("run", help="run scenarios on N guests in parallel (default: the quick set)")
    run.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                     help="scenario files or built-in names (default: the quick set)")
    run.add_argument("-n", "--jobs", type=_positive_int, default=None, help="guests in parallel (default 2)")
    run.add_argument("--set", dest="scenario_set", default="quick", help="built-in set when none is named")
    run.add_argument("--out", type=Path, default=None, help="results folder (default results/run-TIME)")
    run.add_argument("--json", type=Path, help="JSON-lines results file (default OUT/results.jsonl)")
    run.add_argument("--junit", type=Path, help="also write JUnit XML")
    run.add_argument("--report", type=Path, help="also write an HTML report")
    run.add_argument("--smoke", action="store_true", help="only the connector echo smoke check")

    bench = sub.add_parser("bench", help="benchmarks (print a table, write JSON)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", parser_class=_Parser)
    bench_sub.required = True
    boot = bench_sub.add_parser("boot", help="boot-to-SSH-ready against the boot floor")
    boot.add_argument("--runs", type=_positive_int, default=5, help="boots of each kind (at least 5)")
    boot.add_argument("--cpus", type=_positive_int, default=2)
    boot.add_argument("--json", type=Path, default=Path("results/bench-boot.json"))
    suite = bench_sub.add_parser("suite", help="the quick set with -n 1 and -n 2: wall times, ratio, overhead")
    suite.add_argument("--json", type=Path, default=Path("results/bench-suite.json"))
    kmod = bench_sub.add_parser("kmod", help="cbus_insert against a direct send, rates and latency")
    kmod.add_argument("--cpus", type=_positive_int, default=2)
    kmod.add_argument("--runs", type=_positive_int, default=1,
                      help="measure in this many fresh guests, one after another, and compare them")
    kmod.add_argument("--json", type=Path, default=Path("results/bench-kmod.json"))
    return parser


def _lab(args: argparse.Namespace) -> Lab:
    return Lab(LabOptions(cache=args.cache, kernel=args.kernel, kbuild=args.kbuild,
                          kernel_modules=args.kernel_modules, accel=args.accel,
                          tcg_threads=args.tcg_threads, snapshot=not args.no_snapshot))


def _shape(args: argparse.Namespace) -> GuestShape:
    return GuestShape(cpus=args.cpus, memory_mb=args.mem)


def cmd_image_build(args: argparse.Namespace) -> int:
    lab = _lab(args)
    image = lab.image
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
    shape = _shape(args)
    lab = _lab(args)
    spec = lab.guest_spec(shape, name="exec", with_module=not args.no_module, cmdline=tuple(args.append))
    print(f"cnlab: {shape.cpus}-vCPU guest under {spec.accel.label} ({spec.accel.reason})", file=sys.stderr)
    with Guest(spec) as guest:
        for source, dest in args.put:
            guest.ssh.put(source, dest, mode=source.stat().st_mode & 0o777)
        result = guest.run(argv, timeout=args.timeout, sink=_stream)
    if result.extra.get("timed_out"):
        raise GuestError(f"command timed out after {args.timeout} s: {argv[0]}")
    return result.exit_status


def cmd_shell(args: argparse.Namespace) -> int:
    shape = _shape(args)
    lab = _lab(args)
    spec = lab.guest_spec(shape, name="shell", with_module=not args.no_module, cmdline=tuple(args.append))
    ssh = shutil.which("ssh")
    if ssh is None:
        raise UsageError("cnlab shell needs the ssh client: apt-get install openssh-client")
    print(f"cnlab: booting a {shape.cpus}-vCPU guest under {spec.accel.label} …", file=sys.stderr)
    with Guest(spec) as guest, tempfile.TemporaryDirectory(prefix="cnlab-shell-") as tmp:
        keys = spec.image.keys
        pinned = Path(tmp) / "known_hosts"
        host_key = keys.host_pub.read_text().split()[:2]
        pinned.write_text(f"[127.0.0.1]:{guest.ssh_port} {' '.join(host_key)}\n")
        argv = [ssh, "-i", str(keys.client_key), "-o", f"UserKnownHostsFile={pinned}",
                "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
                "-p", str(guest.ssh_port), "root@127.0.0.1"]
        return subprocess.call(argv)


def cmd_run(args: argparse.Namespace) -> int:
    if args.smoke:
        from lab.cli.smoke import run_smoke

        return run_smoke(_lab(args), args.json)
    import time as _time

    from lab.engine.run import run_scenarios
    from lab.engine.sets import resolve_scenarios

    scenarios = resolve_scenarios(args.scenarios, args.scenario_set)
    jobs = args.jobs or min(2, os.cpu_count() or 1)
    if jobs < 1 or jobs > 16:
        raise UsageError("cnlab run: -n must be between 1 and 16")
    out_dir = args.out or Path("results") / _time.strftime("run-%Y%m%d-%H%M%S")
    from lab.engine.run import PluginOptions

    config_path = args.config or (Path("cnlab.toml") if Path("cnlab.toml").exists() else None)
    plugin_config = PluginOptions(config_path, tuple(args.plugin_args), tuple(args.plugins_dir))
    from lab.report.summary import finish_run

    outcome = run_scenarios(_lab(args), scenarios, min(jobs, len(scenarios)), out_dir, args.json,
                            plugin_config=plugin_config)
    return finish_run(outcome, sys.stdout, args.junit, args.report)


def cmd_report(args: argparse.Namespace) -> int:
    from lab.engine.results import read_results
    from lab.report.html import write_html

    if not args.results.is_file():
        raise UsageError(f"cnlab report: no such results file: {args.results}")
    records = read_results(args.results)
    if not records:
        raise UsageError(f"cnlab report: {args.results} holds no results")
    output = args.output or args.results.with_suffix(".html")
    write_html(records, output)
    print(f"wrote {output} ({len(records)} scenarios)")
    return 0


def cmd_bench_boot(args: argparse.Namespace) -> int:
    from lab.bench.boot import run_boot_bench

    if args.runs < 5:
        raise UsageError("cnlab bench boot: --runs must be at least 5")
    return run_boot_bench(_lab(args), runs=args.runs, shape=GuestShape(cpus=args.cpus), json_path=args.json)


def cmd_bench_suite(args: argparse.Namespace) -> int:
    import tempfile

    from lab.bench.suite import run_suite_bench

    with tempfile.TemporaryDirectory(prefix="cnlab-suite-") as tmp:
        return run_suite_bench(_lab(args), args.json, Path(tmp))


def cmd_bench_kmod(args: argparse.Namespace) -> int:
    from lab.bench.kmod import run_kmod_bench

    return run_kmod_bench(_lab(args), shape=GuestShape(cpus=args.cpus), json_path=args.json, runs=args.runs)


def cmd_plugins(args: argparse.Namespace) -> int:
    from lab.cli.plugins import list_plugins

    return list_plugins(args)


COMMANDS = {
    ("image", "build"): cmd_image_build,
    ("exec", None): cmd_exec,
    ("shell", None): cmd_shell,
    ("run", None): cmd_run,
    ("plugins", None): cmd_plugins,
    ("report", None): cmd_report,
    ("bench", "boot"): cmd_bench_boot,
    ("bench", "kmod"): cmd_bench_kmod,
    ("bench", "suite"): cmd_bench_suite,
}


def _terminate(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cnlab`` command."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="cnlab: %(message)s")
        logging.getLogger("paramiko").setLevel(logging.WARNING)
        # qemu.qmp logs a dying guest's closed socket as an ERROR; cnlab reports that itself.
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
        sub = getattr(args, "image_command", None) or getattr(args, "bench_command", None)
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
