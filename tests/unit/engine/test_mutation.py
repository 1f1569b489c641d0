"""cnlab mutate's runner without guests: the build filter, resumability, the table; bad input on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.cli.main import main
from lab.engine import mutation
from lab.engine.mutation import MutationRun, Suite, load_results
from lab.image.module import CompileError, ModuleBuild, kmod_dir
from lab.image.mutants import generate_mutants
from lab.report.mutation import mutation_table, write_mutation_table


@pytest.fixture
def fake_lab(tmp_path, monkeypatch):
    """Builds and suites replaced: a mutant's fate is chosen by its operator."""
    calls = {"build": [], "suite": []}
    (tmp_path / "base").mkdir()
    base_ko = tmp_path / "base" / "cnlab.ko"
    base_ko.write_bytes(b"base")

    def build_module(kernel, cache, source=None, **kw):
        if source is None:
            return ModuleBuild((base_ko,), "basehash", "x/src/cbus.c:1: warning: old one\n", tmp_path)
        text = "".join(p.read_text() for p in sorted(source.glob("*.c")))
        calls["build"].append(source)
        ko = source / "cnlab.ko"
        ko.write_text(text)
        (tmp_path / "marker").write_text("")
        op = source.parent.name.split("_")[2]
        if op == "constant":
            raise CompileError("module build failed: error: boom", "", source, tmp_path / "log")
        log = "y/src/gen.c:9: warning: new one\n" if op == "return" else "x/src/cbus.c:1: warning: old one\n"
        return ModuleBuild((ko,), f"h-{source.parent.name}", log, tmp_path)

    def differs(a, b):
        return [] if "once" in str(b) else [".text"]

    def run_suite(lab, suite, source, out_dir, jobs):
        calls["suite"].append(source)
        if source == kmod_dir():
            return "survived", "baseline"
        return ("killed", "verdict failed") if "negate" in str(source) else ("survived", "passed")

    monkeypatch.setattr(mutation, "build_module", build_module)
    monkeypatch.setattr(mutation, "object_code_differs", differs)
    monkeypatch.setattr(mutation, "run_suite", run_suite)
    return SimpleNamespace(kernel=None, cache=tmp_path / "cache"), calls


def _pick(ops):
    every = generate_mutants(kmod_dir())
    return [next(m for m in every if m.operator == op) for op in ops]


def test_build_filter_suite_outcomes_and_resume(fake_lab, tmp_path):
    lab, calls = fake_lab
    mutants = _pick(["constant", "return", "once", "negate", "boundary"])
    suite = Suite("checks", ("echo",))
    lines: list[str] = []
    out = tmp_path / "out"
    results = MutationRun(lab, mutants, suite, out, jobs=2, on_line=lines.append).run()
    status = {mid.split(":")[2]: r["status"] for mid, r in results.items()}
    assert status == {"constant": "compile-error", "return": "warning", "once": "unchanged", "negate": "killed",
                      "boundary": "survived"}
    assert results[mutants[1].mutant_id]["detail"] == "gen.c:9: warning: new one"
    assert len(calls["suite"]) == 3  # the baseline and the two mutants whose object code changed
    # each mutant's tree is kmod/ with exactly its change
    negate_tree = next(p for p in calls["suite"] if "negate" in str(p))
    assert (negate_tree / mutants[3].file).read_text() == mutants[3].apply((kmod_dir() / mutants[3].file).read_text())

    # resumed: nothing is built or run again
    calls["build"].clear()
    calls["suite"].clear()
    again = MutationRun(lab, mutants, suite, out, jobs=1, on_line=lines.append).run()
    assert again == results and calls == {"build": [], "suite": []}
    assert "5 done before, 0 to do" in lines[-1]
    # another suite reruns only the mutants that reached a suite (and its own baseline)
    MutationRun(lab, mutants, Suite("checks", ("perm",)), out, on_line=lines.append).run()
    assert len(calls["suite"]) == 3 and len(calls["build"]) == 2
    # the results file is keyed by id: the last record wins
    assert set(load_results(out / "results.jsonl")) == {m.mutant_id for m in mutants} | {"baseline:basehash"}


def test_an_error_is_retried_and_a_failing_baseline_stops_the_run(fake_lab, tmp_path, monkeypatch):
    lab, calls = fake_lab
    (mutant,) = _pick(["negate"])
    outcomes = iter([("survived", "baseline"), ("error", "host trouble"), ("killed", "now")])
    monkeypatch.setattr(mutation, "run_suite", lambda *a: next(outcomes))
    out = tmp_path / "out"
    first = MutationRun(lab, [mutant], Suite("checks", ("echo",)), out, on_line=lambda s: None).run()
    assert first[mutant.mutant_id]["status"] == "error"
    second = MutationRun(lab, [mutant], Suite("checks", ("echo",)), out, on_line=lambda s: None).run()
    assert second[mutant.mutant_id]["status"] == "killed"

    monkeypatch.setattr(mutation, "run_suite", lambda *a: ("killed", "broken before mutation"))
    with pytest.raises(mutation.LabError, match="fails on the unmutated module"):
        MutationRun(lab, [mutant], Suite("checks", ("perm",)), tmp_path / "o2", on_line=lambda s: None).run()


def test_the_table_has_the_score_and_every_diff(tmp_path):
    recs = [{"id": "a.c:1:negate:1", "file": "a.c", "line": 1, "operator": "negate", "status": "killed",
             "description": "== -> !=", "diff": "-x == y\n+x != y\n"},
            {"id": "a.c:2:lock:2", "file": "a.c", "line": 2, "operator": "lock", "status": "survived",
             "description": "delete mutex_lock()", "diff": "-\tmutex_lock(&l);\n+\n"},
            {"id": "a.c:3:constant:3", "file": "a.c", "line": 3, "operator": "constant", "status": "unchanged",
             "description": "1 -> 2", "diff": "<d>"}]
    table = mutation_table(recs, "quick:echo", "cnlab mutate")
    assert table["score"] == {"killed": 1, "survived": 1, "equivalent": 0, "percent": 50.0,
                              "percent_non_equivalent": 50.0}
    assert [r["status"] for r in table["mutants"]] == ["survived", "killed", "unchanged"]
    write_mutation_table(table, tmp_path / "t.json", tmp_path / "t.html")
    page = (tmp_path / "t.html").read_text()
    assert "mutex_lock(&amp;l)" in page and "&lt;d&gt;" in page and "<script" not in page
    assert json.loads((tmp_path / "t.json").read_text())["counts"] == {"killed": 1, "survived": 1, "unchanged": 1}


@pytest.mark.parametrize("argv, message", [
    (["--operators", "nope"], "--operators 'nope': unknown operator"),
    (["--files", "x.c"], "--files 'x.c': not a C file of kmod/"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--limit", "abc"], "not a whole number"),
    (["-n", "0"], "-n must be between 1 and 16"),
    (["--id", "cbus.c:1:negate:0000000000"], "no such mutant"),
    (["--suite", "fast"], "--suite 'fast': choose quick, checks or pytest"),
    (["--suite", "quick", "--select", "nosuch"], "'nosuch': not a quick scenario"),
    (["--suite", "checks", "--select", "echo,nosuch"], "'nosuch': not a guest check"),
    (["--suite", "pytest"], "needs --select"),
    (["--budget", "soon"], "not a duration: 'soon'"),
    (["--budget", "0m"], "must be more than nothing"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(["mutate", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_list_prints_ids_and_counts(capsys):
    assert main(["mutate", "--list", "--operators", "sync", "--files", "ctl.c"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"{len(out) - 1} of {len(out) - 1} mutants; by operator: sync")
    assert all(line.startswith("ctl.c:") for line in out[:-1])


def test_out_must_be_a_folder(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("")
    assert main(["mutate", "--out", str(f), "--list"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_quick_suite_outcome_names_the_failed_verdicts_and_counts_a_crash_retry_as_killed(tmp_path, monkeypatch):
    from lab.engine import run as engine_run
    from lab.engine.run import RunOutcome
    from lab.plugin.model import ScenarioResult, Verdict

    outcomes = [
        [ScenarioResult("a", "a.toml", status="passed"),
         ScenarioResult("b", "b.toml", status="failed", verdicts=[Verdict("cbus_ledger", False, "x != y")])],
        [ScenarioResult("a", "a.toml", status="passed", retried=True)],
        [ScenarioResult("a", "a.toml", status="passed")],
    ]
    monkeypatch.setattr(engine_run, "run_scenarios",
                        lambda *a, **k: RunOutcome(outcomes.pop(0), {}, (), tmp_path / "r.jsonl"))
    lab = SimpleNamespace(with_module_source=lambda source, guests_at_once=None: "mutant-lab")
    suite = Suite("quick", ("proc-storm-cbus",))
    status, detail = mutation.run_suite(lab, suite, tmp_path, tmp_path / "o1", 1)
    assert status == "killed" and detail == "b failed: cbus_ledger: x != y"
    status, detail = mutation.run_suite(lab, suite, tmp_path, tmp_path / "o2", 1)
    assert status == "killed" and "first attempt ended in an error" in detail
    assert mutation.run_suite(lab, suite, tmp_path, tmp_path / "o3", 1) == ("survived", "1 scenarios passed")


def test_an_interrupt_does_not_wait_for_the_suites_still_running(fake_lab, tmp_path, monkeypatch):
    """SIGTERM (SystemExit) or ^C while guests run: run() ends at once, what was decided stays in results.jsonl."""
    import threading
    import time

    lab, calls = fake_lab
    mutants = _pick(["negate", "boundary"])
    release = threading.Event()

    def slow_suite(lab, suite, source, out_dir, jobs):
        if source == kmod_dir():
            return "survived", "baseline"
        release.wait(30)  # a guest that is still busy
        return "survived", "passed"

    real_build = MutationRun.build

    def build(self, mutant, *args):
        if mutant is mutants[1]:
            raise KeyboardInterrupt
        return real_build(self, mutant, *args)

    monkeypatch.setattr(mutation, "run_suite", slow_suite)
    monkeypatch.setattr(MutationRun, "build", build)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        MutationRun(lab, mutants, Suite("checks", ("echo",)), tmp_path / "out", jobs=2, on_line=lambda s: None).run()
    assert time.monotonic() - started < 10
    release.set()
    assert "baseline:basehash" in load_results(tmp_path / "out" / "results.jsonl")


def test_every_names_each_guest_check_once_in_the_scripts_order():
    from lab.cli.mutate import check_names, parse_suite

    suite = parse_suite("checks", "every", 600.0)
    assert suite.items == tuple(check_names()) and len(set(suite.items)) == len(suite.items) > 20
    assert suite.items[0] == "echo"
    with pytest.raises(Exception, match="'every': not a guest check"):
        parse_suite("checks", "echo,every", 600.0)


def test_a_survivor_listed_as_equivalent_keeps_its_status_and_is_scored_apart(tmp_path, monkeypatch, capsys):
    from lab.image import mutants

    recs = [{"id": f"a.c:{n}:negate:{n:010x}", "file": "a.c", "line": n, "operator": "negate", "status": status,
             "description": "== -> !="} for n, status in enumerate(["killed"] * 3 + ["survived"] * 2, start=1)]
    listed = tmp_path / "equivalent-mutants.txt"
    listed.write_text("# id  reason\n\na.c:4:negate:0000000004  a dynamic hotplug state is never 0\n"
                      "a.c:1:negate:0000000001  killed anyway: not counted\n")
    equivalents = mutants.load_equivalents(listed)
    table = mutation_table(recs, "checks:echo", "cnlab mutate", equivalents)
    assert table["score"] == {"killed": 3, "survived": 2, "equivalent": 1, "percent": 60.0,
                              "percent_non_equivalent": 75.0}
    by_id = {r["id"]: r for r in table["mutants"]}
    assert by_id["a.c:4:negate:0000000004"]["equivalent"].startswith("a dynamic")
    assert "equivalent" not in by_id["a.c:1:negate:0000000001"]
    assert by_id["a.c:1:negate:0000000001"]["listed_equivalent"] == "killed anyway: not counted"
    assert by_id["a.c:4:negate:0000000004"]["status"] == "survived"
    write_mutation_table(table, tmp_path / "t.json", tmp_path / "t.html")
    assert "equivalent: a dynamic hotplug state" in (tmp_path / "t.html").read_text()
    listed.write_text("a.c:4:negate  no hash\n")
    with pytest.raises(ValueError, match="equivalent-mutants.txt:1: not 'FILE:LINE:OPERATOR:HASH  reason'"):
        mutants.load_equivalents(listed)
    monkeypatch.setattr(mutants, "EQUIVALENTS_FILE", listed)
    assert main(["mutate", "--list", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert "equivalent-mutants.txt:1" in err and len(err.strip().splitlines()) == 1


def test_the_listed_equivalents_name_mutants_that_exist():
    from lab.image.mutants import load_equivalents

    known = {m.mutant_id for m in generate_mutants(kmod_dir())}
    listed = load_equivalents()
    assert listed and not set(listed) - known, sorted(set(listed) - known)


def test_every_survivor_listed_as_equivalent_and_none_killed_reads_without_a_percentage(tmp_path):
    recs = [{"id": "a.c:1:negate:0000000001", "file": "a.c", "line": 1, "operator": "negate", "status": "survived",
             "description": "== -> !="}]
    table = mutation_table(recs, "checks:echo", "cnlab mutate", {"a.c:1:negate:0000000001": "never 0"})
    assert table["score"]["percent_non_equivalent"] is None
    write_mutation_table(table, tmp_path / "t.json", tmp_path / "t.html")
    page = (tmp_path / "t.html").read_text()
    assert "None" not in page and "0 of the 0 others killed" in page


def test_a_cut_short_last_line_is_no_result_not_an_error():
    text = '{"test": "echo", "ok": true}\n{"test": "echo", "ok": true, "timing": true}\n{"test": "bal'
    failed, not_run = mutation.checks_outcome(text, ("echo", "balance"))
    assert failed == ["balance: no result"] and not_run == []


class _BootGuest:
    """A guest for the checks suite: its console and taint as given, the checks' output as given."""

    def __init__(self, console, taint=0x3000, output=b""):
        self.console, self.taint, self.output, self.commands = console, taint, output, []
        self.spec = SimpleNamespace(modules=(Path("cnlab.ko"),), load_modules=True, snapshots=None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def console_text(self):
        return self.console

    def tainted(self):
        return self.taint

    def alive(self):
        return True

    def run(self, argv, timeout=None, check=False, abort=None, **kw):
        from lab.command import CommandResult

        self.commands.append(argv)
        if argv[:2] == ["sh", "-c"]:  # a kmemleak scan: this kernel has none
            return CommandResult(argv, 3, b"")
        return CommandResult(argv, 0, self.output)


def _checks_with(monkeypatch, tmp_path, guest, flavour="cloud", accel="tcg", specs=None):
    import lab.guest.files
    import lab.guest.machine

    guests = iter(guest) if isinstance(guest, list) else None  # a guest per boot, or the one for every boot
    monkeypatch.setattr(lab.guest.machine, "Guest", lambda spec, log_dir=None: next(guests) if guests else guest)
    monkeypatch.setattr(lab.guest.files, "install_guest_programs", lambda g: "/lib")
    monkeypatch.setattr("lab.guest.kmemleak._kernel_lacks_kmemleak", lambda g: True)
    specs = [] if specs is None else specs
    lab = SimpleNamespace(with_module_source=lambda source: SimpleNamespace(
                              guest_spec=lambda shape, **k: specs.append((shape, k))),
                          options=SimpleNamespace(kernel_flavour=flavour),
                          accel_for=lambda cpus: SimpleNamespace(name=accel))
    return mutation._run_checks(lab, Suite("checks", ("echo",)), tmp_path, tmp_path)


@pytest.mark.parametrize("flavour, accel, memory, cmdline", [
    ("cloud", "tcg", 1024, ("slub_debug=FZPU", "watchdog_thresh=60", "rcupdate.rcu_cpu_stall_timeout=60",
                         "sysctl.kernel.hung_task_timeout_secs=300")),
    ("debug", "tcg", 2048, ("slub_debug=FZPU", "watchdog_thresh=60", "rcupdate.rcu_cpu_stall_timeout=60",
                         "sysctl.kernel.hung_task_timeout_secs=300")),
    ("debug", "kvm", 2048, ("slub_debug=FZPU",)),
])
def test_the_checks_guest_has_room_for_the_debug_kernel_and_tcg_time(monkeypatch, tmp_path, flavour, accel, memory,
                                                                    cmdline):
    specs = []
    out = b'{"test": "echo", "ok": true}\n'
    _checks_with(monkeypatch, tmp_path, _BootGuest("[ 1.0] cnlab: loaded\n", output=out), flavour, accel, specs)
    ((shape, kw),) = specs
    assert (shape.cpus, shape.memory_mb, kw["cmdline"]) == (2, memory, cmdline)


def test_a_report_while_the_module_loaded_at_boot_kills_the_mutant_before_any_check(monkeypatch, tmp_path):
    boot = "[ 32.0] BUG: KASAN: global-out-of-bounds in cnlab_gen_init+0x54/0x60 [cnlab]\n"
    guest = _BootGuest(boot, taint=0x3020)
    status, detail = _checks_with(monkeypatch, tmp_path, guest)
    assert status == "killed" and detail.startswith("at boot: new taint 0x20 (B)") and "KASAN" in detail
    assert not any("cnlab_checks.py" in " ".join(c) for c in guest.commands)


EARLY_KASAN = "[    0.004006] BUG: KASAN: wild-memory-access in do_raw_spin_lock+0x11f/0x270\n"
MODULE_LOADS = "[   17.147999] cnlab: loading out-of-tree module taints kernel.\n"


def test_a_kernel_problem_before_the_module_loaded_boots_again_and_is_not_a_kill(monkeypatch, tmp_path):
    out = b'{"test": "echo", "ok": true}\n'
    early = _BootGuest(EARLY_KASAN + MODULE_LOADS, taint=0x3020)
    clean = _BootGuest(MODULE_LOADS, output=out)
    specs = []
    status, detail = _checks_with(monkeypatch, tmp_path, [early, clean], specs=specs)
    assert (status, detail) == ("survived", "1 checks passed")
    assert [kw["name"] for _shape, kw in specs] == ["mutant", "mutant-reboot"]  # two console logs, side by side
    assert not early.commands  # no check ran on the guest whose kernel was broken before the module


def test_a_kernel_problem_before_the_module_at_both_boots_is_an_error(monkeypatch, tmp_path):
    guests = [_BootGuest(EARLY_KASAN + MODULE_LOADS, taint=0x3020) for _ in range(2)]
    status, detail = _checks_with(monkeypatch, tmp_path, guests)
    assert status == "error" and detail.startswith("the kernel reported a problem before the module loaded, at two "
                                                   "boots: BUG: [    0.004006] BUG: KASAN: wild-memory-access"), detail


def test_a_report_after_the_module_began_to_load_still_kills(monkeypatch, tmp_path):
    boot = MODULE_LOADS + "[ 17.2] BUG: KASAN: global-out-of-bounds in cnlab_gen_init+0x54/0x60 [cnlab]\n"
    status, detail = _checks_with(monkeypatch, tmp_path, [_BootGuest(boot, taint=0x3020)])
    assert status == "killed" and detail.startswith("at boot: ") and "global-out-of-bounds" in detail


def test_a_clean_boot_and_passing_checks_survive(monkeypatch, tmp_path):
    out = b'{"test": "echo", "ok": true}\n{"test": "echo", "ok": true, "timing": true}\n'
    status, detail = _checks_with(monkeypatch, tmp_path, _BootGuest("[ 1.0] cnlab: loaded\n", output=out))
    assert (status, detail) == ("survived", "1 checks passed")


def test_a_budget_leaves_the_mutants_not_reached_for_the_next_run(fake_lab, tmp_path, monkeypatch):
    """Each suite takes 100 s of a fake clock; a 150 s budget: the baseline and one mutant, then the rest is
    left (no record), and the same run again does the next one."""
    lab, calls = fake_lab
    now = [0.0]
    real = mutation.run_suite

    def suite_of_100_s(*args):
        now[0] += 100
        return real(*args)

    monkeypatch.setattr(mutation, "run_suite", suite_of_100_s)
    mutants = _pick(["negate", "boundary", "counter"])
    out, lines = tmp_path / "out", []
    run = MutationRun(lab, mutants, Suite("checks", ("echo",)), out, jobs=1, on_line=lines.append, budget=150,
                      clock=lambda: now[0])
    first = run.run()
    assert list(first) == [mutants[0].mutant_id] and first[mutants[0].mutant_id]["status"] == "killed"
    assert sorted(run.left) == sorted(m.mutant_id for m in mutants[1:])
    assert "2 of 3 mutants left for the next run" in lines[-1]
    assert set(load_results(out / "results.jsonl")) == {"baseline:basehash", mutants[0].mutant_id}

    now[0] = 1000.0  # the next night: the baseline is done; a suite starts before 1050 s, none after
    again = MutationRun(lab, mutants, Suite("checks", ("echo",)), out, jobs=1, on_line=lines.append, budget=50,
                        clock=lambda: now[0])
    assert list(again.run()) == [m.mutant_id for m in mutants[:2]] and again.left == [mutants[2].mutant_id]
    assert set(load_results(out / "results.jsonl")) == {"baseline:basehash"} | {m.mutant_id for m in mutants[:2]}


def test_builds_stay_at_most_jobs_ahead_of_the_guests(fake_lab, tmp_path, monkeypatch):
    import threading
    import time

    lab, calls = fake_lab
    mutants = _pick(["negate", "boundary", "counter", "lock", "free"])
    started, release = threading.Semaphore(0), threading.Event()
    real = mutation.run_suite

    def held_suite(lab_, suite, source, out_dir, jobs):
        if source != kmod_dir():
            started.release()
            release.wait(30)
        return real(lab_, suite, source, out_dir, jobs)

    monkeypatch.setattr(mutation, "run_suite", held_suite)
    run = MutationRun(lab, mutants, Suite("checks", ("echo",)), tmp_path / "out", jobs=1, on_line=lambda s: None)
    thread = threading.Thread(target=run.run)
    thread.start()
    assert started.acquire(timeout=10)  # the first mutant's suite runs and is held
    deadline = time.monotonic() + 2
    while len(calls["build"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert len(calls["build"]) == 2  # one running, one waiting; the other three not built yet
    release.set()
    thread.join(30)
    assert len(calls["build"]) == 5


def test_the_debug_flavour_compares_object_code_built_without_sanitizers(tmp_path, monkeypatch):
    """A mutant is run on the debug build but judged unchanged by the cloud build: KASAN's descriptors of string
    literals reorder with GCC's numbering of them, so the debug build differs where no instruction does."""
    from lab.guest.labsetup import LabOptions

    built = []

    def build_module(kernel, cache, source=None, **kw):
        folder = tmp_path / kernel / (source.parent.name if source else "base")
        folder.mkdir(parents=True, exist_ok=True)
        ko = folder / "cnlab.ko"
        ko.write_text(kernel)
        built.append((kernel, source is not None))
        return ModuleBuild((ko,), f"h-{kernel}-{folder.name}", "", tmp_path)

    def differs(a, b):  # the debug builds differ (reordered KASAN descriptors); the cloud builds do not
        return [] if a.read_text() == b.read_text() == "cloud" else [".data", ".rodata.str1.1"]

    debug = SimpleNamespace(kernel="debug", cache=tmp_path, options=LabOptions(kernel_flavour="debug"))
    cloud = SimpleNamespace(kernel="cloud", cache=tmp_path)
    monkeypatch.setattr(mutation, "build_module", build_module)
    monkeypatch.setattr(mutation, "object_code_differs", differs)
    monkeypatch.setattr(mutation, "reference_lab", lambda lab: cloud if lab is debug else lab)
    (mutant,) = _pick(["once"])
    results = MutationRun(debug, [mutant], None, tmp_path / "out", on_line=lambda line: None).run()
    record = results[mutant.mutant_id]
    assert record["status"] == "unchanged" and "without sanitizers" in record["detail"]
    assert built == [("debug", False), ("cloud", False), ("debug", True), ("cloud", True)]


def test_the_reference_lab_is_the_cloud_kernel_for_the_debug_flavour_only(tmp_path):
    from lab.guest.labsetup import Lab, LabOptions

    debug = Lab(LabOptions(cache=tmp_path, kernel_flavour="debug"))
    reference = mutation.reference_lab(debug)
    assert reference is not debug and reference.options.kernel_flavour == "cloud"
    assert reference.options.cache == tmp_path
    cloud = Lab(LabOptions(cache=tmp_path))
    assert mutation.reference_lab(cloud) is cloud
    custom = Lab(LabOptions(cache=tmp_path, kernel=tmp_path / "bzImage", kernel_flavour="debug"))
    assert mutation.reference_lab(custom) is custom  # a kernel of one's own: its own build decides
