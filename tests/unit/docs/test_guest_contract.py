"""docs/guest-contract.md stays true, and the example guest programs follow it.

* The page lists every key the built-in checker (``consume.py``) reports, every key the agent adds
  (``accounting``) and every key of the agent's report: read from ``consume.py``'s ``Checker`` run on
  crafted datagrams, from whole reports of real guests (``fixtures/guest-reports.json``, written by
  ``tests/integration/plugins/test_walkthrough.py``, which also compares a live run with the page), and
  from ``consume.py`` run on this host's connector when the test may open one (root).
* The example programs of ``examples/cnlab-example-plugin`` go through the guest agent's own code:
  ``watch.py`` through ``CheckerProc`` and ``reconcile``, ``counter.py`` through ``OneShot``, ``hog.py``
  through ``Actions`` (the host's connector stands in for the guest's: root may send to a group).
* Each known gap of section 10 is pinned by a strict ``xfail`` test: when the engine changes, the test
  fails and the page must change with it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import kabi

from ..guestside.guest_modules import PLUGIN_GUESTSIDE, load_guest_module
from .snippets import contract_keys, first_codes, table_after

ROOT = Path(__file__).resolve().parents[3]
PLUGINS_PAGE = (ROOT / "docs" / "plugins.md").read_text()
GUEST_PROGRAMS = ROOT / "examples" / "cnlab-example-plugin" / "src" / "cnlab_example" / "guest"
FIXTURE_PATH = Path(__file__).parent / "fixtures" / "guest-reports.json"
REPO = Path(__file__).resolve().parents[3]
#: A connector group nothing else on a host uses (the lab module's groups live in guests).
HOST_GROUP = 31

consume = load_guest_module("consume", PLUGIN_GUESTSIDE)
accounting = load_guest_module("agent_accounting")
consumers = load_guest_module("agent_consumers")
faults = load_guest_module("agent_faults")


def _crafted_checker_report() -> dict:
    checker = consume.Checker(resync=False)
    now = time.monotonic_ns()
    for seq in (0, 1, 3, 2):
        buf = kabi.frame_nl(kabi.frame_cn(0x1A, 1, kabi.EVENT.pack(gen_id=0, cpu=1, seq=seq, ts_ns=now - 1000,
                                                                   len=32, flags=0)))
        consume.handle(buf, len(buf), checker, now)
    proc = kabi.frame_nl(kabi.frame_cn(1, 1, consume.PROC_EVENT.pack(1, 0, now) + bytes(24), seq=7))
    consume.handle(proc, len(proc), checker, now)
    return checker.report()


def test_the_page_lists_every_key_of_the_checkers_report():
    keys = contract_keys()
    crafted = _crafted_checker_report()
    assert set(crafted) <= keys["checker"]
    for stream in crafted["streams"].values():
        assert set(stream) <= keys["streams"], set(stream) - keys["streams"]
    assert set(crafted["latency_us"]) <= keys["latency_us"]
    fixture = json.loads(FIXTURE_PATH.read_text())
    for name in ("checker", "beat-watch"):  # real guests' reports
        report = fixture[name]
        assert set(report["accounting"]) <= keys["accounting"]
        assert keys["required"] <= set(report), f"{name} lacks a required key"
    real = fixture["checker"]
    assert set(real) - {"accounting"} == keys["checker"]
    assert all(set(s) <= keys["streams"] for s in real["streams"].values())
    assert set(real["latency_us"]) <= keys["latency_us"]
    assert keys["required"] | keys["optional"] <= keys["checker"]


def _agent_report_keys() -> set[str]:
    """The keys of the JSON object the guest agent prints last (read from its source) and the host adds."""
    tree = ast.parse((REPO / "lab" / "guestside" / "agent.py").read_text())
    dumps = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "dumps"
             and n.args and isinstance(n.args[0], ast.Dict) and len(n.args[0].keys) > 5]
    assert len(dumps) == 1, "the agent prints its report once"
    in_guest = {k.value for k in dumps[0].args[0].keys}
    on_host = set(re.findall(r'report\["(\w+)"\] =', (REPO / "lab" / "engine" / "agent_run.py").read_text()))
    return in_guest | on_host


def test_the_agents_report_has_the_keys_the_fixture_and_the_page_list():
    assert _agent_report_keys() == set(json.loads(FIXTURE_PATH.read_text())["agent_keys"])


def test_the_page_lists_every_key_of_the_agents_report_and_of_a_fault_record():
    keys = contract_keys()
    fixture = json.loads(FIXTURE_PATH.read_text())
    assert set(fixture["agent_keys"]) == keys["agent"]
    record_keys = first_codes(table_after(PLUGINS_PAGE, "A fault record (`record.faults`"))
    for fault in fixture["faults"]:
        assert set(fault) <= record_keys, set(fault) - record_keys


# ------------------------------------------------------------------ the host's connector
@pytest.fixture
def sender():
    """A socket that may send to HOST_GROUP (root on a host with the connector), else skip."""
    try:
        with kabi.open_socket([HOST_GROUP]):
            pass
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, kabi.NETLINK_CONNECTOR)
    except OSError as exc:
        pytest.skip(f"no connector socket on this host ({exc}): needs root and CONFIG_CONNECTOR")
    with sock:
        sock.bind((0, 0))
        yield sock


def _send(sender: socket.socket, gen_id: int, cpu: int, seqs: list[int]) -> None:
    for seq in seqs:
        event = kabi.EVENT.pack(gen_id=gen_id, cpu=cpu, seq=seq, ts_ns=time.monotonic_ns(), len=32, flags=0)
        sender.sendto(kabi.frame_nl(kabi.frame_cn(0x1A, 1, event, seq=seq)), (0, 1 << (HOST_GROUP - 1)))


def _guest_folder(tmp_path: Path, *programs: Path) -> Path:
    """A stand-in for /run/cnlab/plugins: the programs with kabi.py beside them."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    for program in (ROOT / "lab" / "kabi.py", *programs):
        shutil.copy(program, folder / program.name)
    return folder


def test_consume_py_on_the_hosts_connector_reports_the_documented_keys(tmp_path, sender):
    folder = _guest_folder(tmp_path, PLUGIN_GUESTSIDE / "consume.py")
    out = folder / "checker.json"
    proc = subprocess.Popen([sys.executable, str(folder / "consume.py"), "--groups", str(HOST_GROUP), "--name",
                             "checker", "--out", str(out)], stdout=subprocess.DEVNULL)
    assert kabi.wait_until(lambda: Path(f"{out}.ready").exists(), 20)
    _send(sender, 0, 0, [0, 1, 2])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    report = json.loads(out.read_text())
    assert set(report) == contract_keys()["checker"]
    assert report["received"] == 3 and report["streams"]["0/0"]["next"] == 3


def test_the_example_checker_consumer_follows_the_protocol_through_the_agents_own_code(tmp_path, sender):
    """watch.py started, watched and stopped by the agent's CheckerProc; its report reconciled by the agent."""
    folder = _guest_folder(tmp_path, GUEST_PROGRAMS / "watch.py")
    argv = [sys.executable, str(folder / "watch.py"), "--rcvbuf", "65536", "--groups", str(HOST_GROUP)]
    work = tmp_path / "out" / "scenario"
    work.mkdir(parents=True)
    proc = consumers.CheckerProc("beat-watch", argv, True, str(work))  # listen: --listen-proc is accepted
    assert kabi.wait_until(proc.ready, 20), (work / "beat-watch.json.stderr").read_text()
    _send(sender, 0, 0, [0, 1, 3])  # seq 2 never sent: a gap the kernel did not count
    _send(sender, 0, 1, [0, 1])
    assert kabi.wait_until(lambda: proc.live().get("received") == 5, 10), proc.live()
    (report,) = proc.stop()
    keys = contract_keys()
    assert keys["required"] <= set(report) and report["name"] == "beat-watch" and report["groups"] == [HOST_GROUP]
    assert report["streams"]["0/0"] == {"received": 3, "gaps": 1, "reordered": 0, "next": 4,
                                        "max_interval_ms": report["streams"]["0/0"]["max_interval_ms"]}
    cpu = {"ok": 0, "err_nolistener": 0, "err_nomem": 0, "err_full": 0, "err_other": 0}
    gens = {0: {"state": kabi.CNLAB_GEN_DONE, "cpus": {0: cpu | {"generated": 4}, 1: cpu | {"generated": 3}}}}
    result = accounting.reconcile(report, gens, 0, {0: [HOST_GROUP]})
    # lost: 1 gap + 1 tail (cpu 1 generated 3, next expected 2); the socket dropped nothing: silent loss
    assert result == {"exact": True, "lost": 2, "socket_drops": 0, "pre_socket": 0, "cbus_nlerr": 0,
                      "reconciled": False, "since_join": False}


def test_the_example_oneshot_consumer_prints_its_report_as_its_last_line(tmp_path, sender):
    folder = _guest_folder(tmp_path, GUEST_PROGRAMS / "counter.py")
    oneshot = consumers.OneShot("beat-counter", [sys.executable, str(folder / "counter.py"), "--group",
                                                 str(HOST_GROUP), "--seconds", "3"])
    time.sleep(1.0)  # a oneshot consumer is not waited for: give it time to bind
    _send(sender, 0, 0, [0, 1])
    _send(sender, 0, 1, [0])
    (report,) = oneshot.stop()
    assert report == {"beats": 3, "per_cpu": {"0": 2, "1": 1}, "name": "beat-counter", "protocol": "oneshot"}


def test_the_example_fault_program_through_the_agents_actions(tmp_path):
    """hog.py as an exec action: exit 0 and a mark; a bad option: the action fails with the end of its stderr."""
    actions = faults.Actions(None, lambda signum: None, str(tmp_path))
    hog = str(GUEST_PROGRAMS / "hog.py")
    marks = tmp_path / "example" / "marks.jsonl"
    done = actions.run(["exec", sys.executable, hog, "--ms", "20", "--marks", str(marks)])
    assert done == {"action": f"exec {sys.executable} {hog} --ms 20 --marks {marks}", "ok": True}
    (mark,) = [json.loads(line) for line in marks.read_text().splitlines()]
    assert mark["ms"] == 20 and mark["busy_ms"] >= 20 and mark["cpus"] == sorted(os.sched_getaffinity(0))
    failed = actions.run(["exec", sys.executable, hog, "--ms", "0", "--marks", str(marks)])
    assert failed["ok"] is False
    assert failed["error"] == "OSError: exited 2: cpu-hog: --ms 0 is outside 1..10000"
    missing = actions.run(["exec", "/run/cnlab/plugins/nosuch.py"])
    assert missing["error"].startswith("FileNotFoundError: ")


def test_a_checker_consumer_without_a_report_is_reported_missing_with_its_stderr(tmp_path):
    program = tmp_path / "dies.py"
    program.write_text("import sys\nprint('cannot open the socket', file=sys.stderr)\nsys.exit(3)\n")
    proc = consumers.CheckerProc("dies", [sys.executable, str(program)], False, str(tmp_path))
    assert proc.stop() == [{"name": "dies", "missing": True, "status": 3, "stderr": "cannot open the socket\n"}]


# ------------------------------------------------------------------ section 10: known gaps
def test_fixed_gap_a_report_without_streams_is_partial_accounting_not_a_dead_agent():
    cpu = {"generated": 5, "ok": 5, "err_nolistener": 0, "err_nomem": 0, "err_full": 0, "err_other": 0}
    result = accounting.reconcile({"name": "thin", "received": 5}, {0: {"state": 2, "cpus": {0: cpu}}}, 0, {0: [2]})
    assert result["exact"] is False


def test_fixed_gap_a_report_that_is_not_json_is_reported_missing_not_a_dead_agent(tmp_path):
    program = tmp_path / "torn.py"
    program.write_text("import argparse, signal, time\nap = argparse.ArgumentParser()\n"
                       "ap.add_argument('--name'); ap.add_argument('--out')\nargs = ap.parse_args()\n"
                       "stop = []\nsignal.signal(signal.SIGTERM, lambda *a: stop.append(1))\n"
                       "open(args.out + '.ready', 'w').close()\nwhile not stop:\n    time.sleep(0.01)\n"
                       "open(args.out, 'w').write('{\"name\": ')\n")
    proc = consumers.CheckerProc("torn", [sys.executable, str(program)], False, str(tmp_path))
    assert kabi.wait_until(proc.ready, 20)
    assert proc.stop()[0]["missing"] is True


def test_fixed_gap_a_file_counter_on_a_missing_file_does_not_stop_the_agent(tmp_path):
    agent = load_guest_module("agent")
    probes = agent.make_probes({"mine": {"kind": "file", "path": str(tmp_path / "nosuch"), "pattern": r"(\d+)",
                                         "relative": True}}, [], None, [], None)
    with pytest.raises(OSError):
        probes["mine"]()


def _exec_fault(label, trigger, argv, duration=0.0, restore=()):
    text = f"at {trigger['at']}" if trigger.get("at") is not None else "on x"
    return {"label": label, "name": label, "side": "guest", "inject": [["exec", *argv]], "restore": list(restore),
            "trigger": {"at": None, "every": None, "on": None, "threshold": 1, "text": text} | trigger,
            "duration": duration, "summary": ""}


def test_fixed_gap_a_running_fault_program_does_not_delay_other_faults(tmp_path):
    flag = tmp_path / "flag"
    plan = [_exec_fault("slow", {"at": 0.05}, ["sleep", "0.6"]),
            {**_exec_fault("quick", {"at": 0.1}, ["touch", str(flag)])}]
    scheduler = faults.FaultScheduler(plan, faults.Actions(None, lambda s: None, str(tmp_path)), {}, 2.0)
    scheduler.fire_before_load()
    scheduler.start_load(time.monotonic())
    time.sleep(0.9)
    records, _ = scheduler.finish()
    quick = next(r for r in records if r["label"] == "quick")
    assert quick["start"] - quick["due"] < 0.2, quick


def test_fixed_gap_a_fault_program_runs_at_normal_priority(tmp_path):
    out = tmp_path / "policy"
    code = f"import os; open({str(out)!r}, 'w').write(str(os.sched_getscheduler(0)))"
    scheduler = faults.FaultScheduler([_exec_fault("policy", {"at": 0.05}, [sys.executable, "-c", code])],
                                      faults.Actions(None, lambda s: None, str(tmp_path)), {}, 1.0)
    scheduler.fire_before_load()
    scheduler.start_load(time.monotonic())
    assert kabi.wait_until(out.exists, 10)
    scheduler.finish()
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        pytest.skip("the test itself does not run at normal priority")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        pytest.skip("no permission for SCHED_FIFO here: the fault thread runs at normal priority anyway")
    assert int(out.read_text()) == os.SCHED_OTHER


def test_fixed_gap_a_spawned_program_ends_when_its_fault_is_undone(tmp_path):
    fault = _exec_fault("bg", {"at": 0.05}, [], duration=0.1, restore=[["write", str(tmp_path / "undone"), "1"]])
    fault["inject"] = [["spawn", "sleep", "30"]]
    actions = faults.Actions(None, lambda s: None, str(tmp_path))
    scheduler = faults.FaultScheduler([fault], actions, {}, 2.0)
    scheduler.fire_before_load()
    scheduler.start_load(time.monotonic())
    try:
        assert kabi.wait_until(lambda: actions.spawned, 5)
        proc = actions.spawned[0]
        assert kabi.wait_until((tmp_path / "undone").exists, 5)
        assert kabi.wait_until(lambda: proc.poll() is not None, 5), "still running after its restore"
    finally:
        records, _ = scheduler.finish()
    assert [a["action"] for a in records[0]["actions"]][1] == "stop sleep 30"


def test_fixed_gap_lab_plugin_unconfigure_is_called_at_the_end_of_a_command(tmp_path, monkeypatch, capsys):
    from lab.cli.main import main

    plugins = tmp_path / "p"
    plugins.mkdir()
    (plugins / "tidy.py").write_text(
        "from pathlib import Path\nfrom lab import hookimpl\n\n\n@hookimpl\ndef lab_plugin_unconfigure(config):\n"
        f"    Path({str(tmp_path / 'unconfigured')!r}).touch()\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--plugins-dir", str(plugins), "plugins"]) == 0
    capsys.readouterr()
    assert (tmp_path / "unconfigured").exists()


def test_fixed_gap_a_plugins_own_kill_fault_excuses_the_killed_consumer():
    from lab import hookimpl
    from lab.config import LabConfig
    from lab.engine.scenario import scenario_from_dict
    from lab.plugin import FaultSpec, get_plugin_manager
    from lab.plugin.objects import Fault, signal_consumers

    class Killer:
        @hookimpl
        def lab_faults_register(self, registry):
            registry.add_fault(FaultSpec("my-kill", "SIGKILL the consumers", "consumer",
                                         lambda params: Fault((signal_consumers("KILL"),))))

    pm = get_plugin_manager(LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"}), setup=False)
    pm.add_plugin(Killer(), "killer", "test", "here")
    pm.setup_plugins()
    scenario = scenario_from_dict({"emulators": [{"name": "generator"}], "faults": [{"name": "my-kill", "at": 1}]},
                                  "s.toml", pm.registries)
    fired = [{"label": "my-kill", "ok": True, "actions": [{"action": "signal consumers KILL", "ok": True}]}]
    agent = {"errors": [], "drain": {"ok": True}, "faults": fired, "live": [],
             "consumers": [{"name": "checker", "missing": True, "status": -9, "stderr": ""},
                           {"name": "checker-r1", "received": 10, "reordered": 0, "resync": True,
                            "accounting": {"exact": False, "reason": "restarted"}}]}
    verdicts = pm.call_each("lab_result_check", scenario=scenario, data={"agent": agent})["checks"][0]
    assert next(v for v in verdicts if v.name == "consumers").ok
