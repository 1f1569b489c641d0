"""The native checker (checker-native) beside the Python one, in one real guest.

Both listen to the same generator run (``lab/guestside/consumer_rate.py``,
``together``): when neither drops, their accounting must agree stream for
stream; when a flood overruns them, each one's loss must equal what the
kernel counted.  Then both run as plugin consumers of one scenario through
the engine, with the real cn_proc among the emulators.
"""

from __future__ import annotations

import json

import pytest
from cnlab_plugins.guestside import HERE as PLUGIN_GUESTSIDE

from lab.engine.results import read_results
from lab.engine.run import EXIT_OK, plugin_manager, run_scenarios
from lab.engine.scenario import scenario_from_dict
from lab.guest.files import put_files

pytestmark = pytest.mark.lab

NATIVE = "/run/cnlab/bin/cnlab-consume"
FLOOD = {"idx": 0x22, "val": 1, "group": 6, "count": 20000, "duration_ns": 0, "cpu_mask": 3, "rate": 0,
         "size_min": 32, "size_max": 32, "context": "kthread", "path": "cbus", "flags": 0, "burst": 256}


def _rates(guest, generator: dict, rcvbuf: int, together: bool = True, backlog: bool = False) -> list[dict]:
    lib = "/run/cnlab/py"
    put_files(guest, [(PLUGIN_GUESTSIDE / "consume.py", f"{lib}/consume.py", 0o755)])
    groups = ["--groups", str(generator["group"]), "--rcvbuf", str(rcvbuf)]
    plan = {"consumers": {"python": ["python3", f"{lib}/consume.py", *groups], "native": [NATIVE, *groups]},
            "together": together, "backlog": backlog, "generator": generator, "folder": "/tmp/checkers"}
    result = guest.run(["python3", f"{lib}/consumer_rate.py"], stdin=json.dumps(plan).encode(), timeout=600,
                       check=True)
    return json.loads(result.text)["runs"]


def _together(guest, generator: dict, rcvbuf: int) -> dict:
    (run,) = _rates(guest, generator, rcvbuf)
    return run


def _lost_before_the_sockets(consumer: dict) -> int:
    """What the kernel counted lost before any socket: refused inserts (a CBUS queue at its limit
    when the drain worker is starved on a loaded machine) and failed sends of the drain.  A loss in
    mid-stream shows as gaps; one at a stream's end only as a short count."""
    acc = consumer["accounting"]
    return acc["pre_socket"] + acc["cbus_nlerr"]


@pytest.mark.parametrize("bundles", [False, True], ids=["one-per-datagram", "bundles"])
def test_both_checkers_account_alike_when_they_keep_up(cnlab_guest, bundles):
    run = _together(cnlab_guest, dict(FLOOD, flags=1 if bundles else 0), 64 << 20)
    py, native = run["consumers"]["python"], run["consumers"]["native"]
    assert run["generated"] == 2 * FLOOD["count"]  # per CPU
    # A starved drain may refuse inserts; both checkers then see the same gaps, and nothing else may differ.
    before = _lost_before_the_sockets(py)
    assert before == _lost_before_the_sockets(native) and 2 * before < run["generated"], run
    assert py["socket_drops"] == native["socket_drops"] == 0, run  # 64 MiB each: neither falls behind
    assert py["received"] == native["received"] == run["generated"] - before, run
    assert py["streams"] == native["streams"]
    assert py["gaps"] == native["gaps"] <= before and py["reordered"] == native["reordered"] == 0
    for c in (py, native):
        assert c["schema"] == 1 and c["accounting"]["reconciled"] and c["accounting"]["lost"] == before, c["accounting"]
        assert sum(row[1] for row in c["series"]) == c["received"]
        assert c["live"] == {"received": c["received"], "gaps": c["gaps"], "enobufs": c["enobufs"]}
    assert native["parser"] == "native" and py["parser"] == "kabi"


def test_both_checkers_count_every_loss_of_an_overrun(cnlab_guest):
    run = _together(cnlab_guest, dict(FLOOD, count=60000), 256 << 10)
    for name, c in run["consumers"].items():
        acc = c["accounting"]
        assert acc["reconciled"], (name, acc)
    assert run["consumers"]["python"]["accounting"]["lost"] > 0, "the flood did not overrun the Python checker"


def test_each_checker_reads_a_whole_backlog_queued_while_it_was_stopped(cnlab_guest):
    runs = _rates(cnlab_guest, FLOOD, 64 << 20, together=False, backlog=True)
    assert [list(run["consumers"]) for run in runs] == [["python"], ["native"]]
    for run in runs:
        (c,) = run["consumers"].values()
        # the generator finished before the checker read anything: its clock starts when it is let go
        before = _lost_before_the_sockets(c)
        assert run["generated"] == 2 * FLOOD["count"] and 2 * before < run["generated"], run
        assert c["received"] == run["generated"] - before and c["gaps"] <= before, run
        assert c["accounting"]["reconciled"] and c["accounting"]["lost"] == before, c["accounting"]
        assert 0 < c["seconds"] and abs(c["msgs_per_s"] * c["seconds"] - c["received"]) < 0.01 * c["received"]


def test_checker_native_is_a_consumer_plugin_of_the_engine(cnlab_lab, tmp_path):
    registries = plugin_manager(None).registries
    data = {"name": "native-and-python", "duration": 3.0, "guest": {"cpus": 2},
            "emulators": [{"name": "proc-events", "count": 800, "rate": 1000},
                          {"name": "irq", "count": 1000, "rate": 1000}, {"name": "cn_proc"}],
            "consumers": [{"name": "checker", "rcvbuf": 8 << 20}, {"name": "checker-native", "rcvbuf": 8 << 20}],
            "invariants": {"max_loss": 0}}
    scenario = scenario_from_dict(data, "<native-and-python>", registries)
    with open(tmp_path / "out.txt", "w") as out:
        status = run_scenarios(cnlab_lab, [scenario], 1, tmp_path / "run", out=out).exit_status
    (record,) = read_results(tmp_path / "run" / "results.jsonl")
    assert status == EXIT_OK, record.problems or record.error
    consumers = {c["name"]: c for c in record.data["agent"]["consumers"]}
    assert set(consumers) == {"checker", "checker-native"}
    assert consumers["checker-native"]["parser"] == "native"
    for c in consumers.values():
        assert c["accounting"]["exact"] and c["accounting"]["reconciled"], c["accounting"]
    module_streams = {k: v for k, v in consumers["checker"]["streams"].items() if not k.startswith("proc/")}
    assert module_streams == {k: v for k, v in consumers["checker-native"]["streams"].items()
                              if not k.startswith("proc/")}
