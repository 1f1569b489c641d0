"""fault_knobs.py on a fake debugfs and /proc: knobs put back in reverse order whatever happens, the workers of
one CPU found by name, make-it-fail cleared after its block."""

from __future__ import annotations

import pytest

from .guest_modules import load_guest_module

knobs = load_guest_module("fault_knobs")


@pytest.fixture
def debugfs(tmp_path, monkeypatch):
    (tmp_path / "failslab").mkdir()
    for name, value in {"probability": "0", "times": "1", "task-filter": "N"}.items():
        (tmp_path / "failslab" / name).write_text(value + "\n")
    monkeypatch.setattr(knobs, "DEBUGFS", str(tmp_path))
    return tmp_path / "failslab"


def test_knobs_are_set_in_order_and_put_back_after_a_failure_inside(debugfs, monkeypatch):
    writes = []
    real_write = knobs.write
    monkeypatch.setattr(knobs, "write", lambda name, value: (writes.append((name, value)), real_write(name, value)))
    with pytest.raises(RuntimeError), knobs.knobs_set({"failslab/times": "5", "failslab/probability": "100"}):
        assert knobs.read("failslab/probability") == "100"
        raise RuntimeError("the check failed")
    assert writes == [("failslab/times", "5"), ("failslab/probability", "100"),
                      ("failslab/probability", "0"), ("failslab/times", "1")]
    assert knobs.read("failslab/times") == "1" and knobs.read("failslab/task-filter") == "N"


def test_a_knob_that_cannot_be_read_puts_back_those_already_set(debugfs):
    with pytest.raises(FileNotFoundError), knobs.knobs_set({"failslab/times": "7", "failslab/nonesuch": "1"}):
        pass
    assert knobs.read("failslab/times") == "1"


def _task(proc, pid, comm):
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "comm").write_text(comm + "\n")
    (proc / str(pid) / "make-it-fail").write_text("0\n")


def test_the_workers_of_a_cpu_are_its_bound_kworkers_and_no_others(tmp_path):
    for pid, comm in [(10, "kworker/1:0"), (11, "kworker/1:1H"), (12, "kworker/1:2-events"), (13, "kworker/0:1"),
                      (14, "kworker/u4:0"), (15, "kworker/11:0"), (16, "sshd")]:
        _task(tmp_path, pid, comm)
    (tmp_path / "self").mkdir()
    assert knobs.kworkers_of(1, proc=str(tmp_path)) == [10, 11, 12]
    assert knobs.kworkers_of(11, proc=str(tmp_path)) == [15]


def test_make_it_fail_is_cleared_after_its_block_and_a_vanished_task_left_out(tmp_path):
    _task(tmp_path, 10, "kworker/1:0")
    with pytest.raises(RuntimeError), knobs.tasks_made_to_fail([10, 99], proc=str(tmp_path)) as marked:
        assert marked == [10] and (tmp_path / "10" / "make-it-fail").read_text() == "1"
        raise RuntimeError
    assert (tmp_path / "10" / "make-it-fail").read_text() == "0"
