"""The controller side of a multi-host session, with fake xdist nodes, reports and schedulers; the
``--cnlab-run`` collection; bad ``--hosts`` input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lab.cli.distributed import DistributedRun, node_host, run_spec
from lab.cli.main import main
from lab.engine.results import read_results
from lab.engine.run import PluginOptions
from lab.plugin.model import Scenario, ScenarioResult


def _node(target: str | None, gid: str = "gw0"):
    return SimpleNamespace(gateway=SimpleNamespace(id=gid, spec=SimpleNamespace(ssh=target)))


def _report(name: str, node, status: str = "passed", when: str = "call"):
    record = ScenarioResult(name, status=status, env={"kernel": "6.1", "host": "worker-side-name"})
    return SimpleNamespace(when=when, user_properties=[("cnlab_record", record.to_json())], node=node,
                           outcome="passed")


@pytest.fixture
def run(tmp_path):
    events = []
    config = SimpleNamespace(getoption=lambda name, default=None: None)
    controller = DistributedRun(config, events.append, ["a", "b"], tmp_path / "results.jsonl")
    controller.events = events
    yield controller
    controller.pytest_unconfigure()


def test_node_hosts():
    assert node_host(_node("root@h1")) == "root@h1"
    assert node_host(_node("-o Foo=bar root@h2")) == "root@h2"
    assert node_host(_node(None)) == node_host(None)  # local workers: this machine's name


def test_each_scenario_is_recorded_once_naming_its_host(run, tmp_path):
    run.pytest_runtest_logreport(_report("a", _node("root@h1")))
    run.pytest_runtest_logreport(_report("a", _node("root@h2")))  # finished, then ran again elsewhere
    run.pytest_runtest_logreport(_report("b", _node("root@h2"), when="setup"))  # not the call phase
    run.pytest_unconfigure()
    records = read_results(tmp_path / "results.jsonl")
    assert [(r.scenario, r.env["host"]) for r in records] == [("a", "root@h1")]
    assert [e.kind for e in run.events] == ["result"] and run.events[0].left == 1


def test_a_lost_hosts_running_item_is_requeued_once_and_not_a_failure(run, tmp_path):
    pending = []
    sched = SimpleNamespace(mark_test_pending=pending.append)
    report = SimpleNamespace(node=_node("root@h2"), outcome="failed")
    run.pytest_testnodedown(_node("root@h2"), "Not properly terminated")
    run.pytest_handlecrashitem("cnlab::b", report, sched)
    assert pending == ["cnlab::b"] and report.outcome == "rerun"
    assert run.pytest_report_teststatus(report)[:2] == ("rerun", "R")
    assert "root@h2" in run.lost_hosts
    second = SimpleNamespace(node=_node("root@h1"), outcome="failed")
    run.pytest_handlecrashitem("cnlab::b", second, sched)  # lost twice: reported as the crash it is
    assert pending == ["cnlab::b"] and second.outcome == "failed"
    run.pytest_runtest_logreport(_report("b", _node("root@h1")))
    run.pytest_unconfigure()
    (record,) = read_results(tmp_path / "results.jsonl")
    assert record.retried and record.attempt == 2 and record.data["hosts"] == {"lost_on": "root@h2"}


def test_a_scheduler_that_cannot_requeue_leaves_the_crash_a_failure(run):
    def cannot(item):
        raise NotImplementedError

    report = SimpleNamespace(node=_node("root@h2"), outcome="failed")
    run.pytest_handlecrashitem("cnlab::a", report, SimpleNamespace(mark_test_pending=cannot))
    assert report.outcome == "failed"


def test_xdist_still_has_the_method_cnlab_wraps():
    from xdist.dsession import DSession

    assert callable(DSession._clone_node)  # DistributedRun.pytest_sessionstart wraps it


def test_the_run_spec_carries_file_texts_and_matrix_names(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('name = "x"\n')
    spec = json.loads(run_spec([Scenario("x", str(path)), Scenario("proc-none-1cpu", "<matrix:proc-none-1cpu>")],
                               PluginOptions(), {"accel": "tcg", "guests_at_once": 2}))
    assert spec["scenarios"] == [{"name": "x", "file": "x.toml", "text": 'name = "x"\n'},
                                 {"name": "proc-none-1cpu", "matrix": True}]
    assert spec["lab"]["guests_at_once"] == 2 and spec["plugins"]["config"] is None


def test_cnlab_run_collects_the_selection_as_items(tmp_path, capsys):
    scenario = tmp_path / "one.toml"
    scenario.write_text('name = "one"\nduration = 1.0\n[[emulators]]\nname = "generator"\n')
    spec = json.loads(run_spec([], PluginOptions(), {}))
    spec["scenarios"] = [{"name": "one", "file": "one.toml", "text": scenario.read_text()},
                         {"name": "proc-none-1cpu", "matrix": True}]
    status = pytest.main(["--config-file=/dev/null", "-p", "no:cacheprovider", "--noconftest", "--co", "-q",
                          f"--cnlab-run={json.dumps(spec)}", f"--rootdir={tmp_path}"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "cnlab::one" in out and "cnlab::proc-none-1cpu" in out


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "--hosts", "", "x"], "--hosts wants distinct USER@HOST"),
    (["run", "--hosts", "a,a"], "--hosts wants distinct USER@HOST"),
    (["run", "--hosts", "a", "--shard", "1/2"], "--hosts does not go with --shard"),
])
def test_bad_hosts_input_is_one_line_and_exit_2(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CNLAB_CACHE", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_the_run_spec_carries_the_guest_packages_of_the_command_line(tmp_path):
    spec = json.loads(run_spec([], PluginOptions(packages=("forkstat",)), {}))
    assert spec["plugins"]["packages"] == ["forkstat"]
