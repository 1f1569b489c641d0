"""The allocation sweep's verdicts and its rounds, with the kernel's fail-nth replaced by scripted steps (the
guest run on the debug kernel, and on a module that answers nothing when its reply cannot be allocated, is in
tests/integration/kmod/test_debug_kernel.py)."""

from __future__ import annotations

import errno

import pytest

from .guest_modules import load_guest_module

sweep = load_guest_module("alloc_sweep")
ENOMEM = -errno.ENOMEM


class FakeReply:
    def __init__(self, status, body=None):
        self.status, self.body, self.seq = status, body or {}, 0
        self.error_name = errno.errorcode.get(-status, str(status)) if status else "OK"


def scripted(rounds):
    """A one_step() playing ``rounds``: per round, a string with a letter per site as step_letter() writes them
    (s, 0, E, L; N for a site the module answers with nothing and counts nowhere), then the step past the end."""
    steps = iter([("0", False)] + [(letter, True) for r in rounds for letter in r + "x"])

    def one_step(c, sock, nth_fd, req, n, seq):
        letter, injected = next(steps)
        injected = injected and letter != "x"
        rec = {"request": req.name, "nth": n, "injected": injected, "lost": int(letter == "L"), "replies": []}
        replies, send_errno = [], 0
        if letter == "s":
            rec["send_errno"], send_errno = "ENOBUFS", errno.ENOBUFS
        elif letter in "0x":
            replies = [FakeReply(0)]
        elif letter == "E":
            replies = [FakeReply(ENOMEM)]
        rec["replies"] = [r.status for r in replies]
        return rec, replies, send_errno

    return one_step


def run(monkeypatch, rounds):
    monkeypatch.setattr(sweep, "one_step", scripted(rounds))
    out = sweep.Sweep()
    sweep.sweep_request(None, None, -1, sweep.Request("ECHO", 1, lambda: b""), out, 0)
    return out


def test_a_module_that_answers_each_failure_passes_with_its_sites_counted(monkeypatch):
    out = run(monkeypatch, ["s0s0E0L0L0"])
    assert not out.problems
    assert out.trace["ECHO"] == "s0s0E0L0L00x"
    assert (out.sites["ECHO"], out.enomem["ECHO"], out.lost_counted["ECHO"], out.send_failed["ECHO"]) == (10, 1, 2, 2)


def test_a_request_answered_by_nothing_and_counted_nowhere_is_a_problem(monkeypatch):
    out = run(monkeypatch, ["s0s0N0L0"])
    (problem,) = out.problems
    assert problem["nth"] == 5 and problem["problem"] == "no reply, and 0 counted lost"
    assert out.trace["ECHO"] == "s0s0!0L00x"


def test_a_round_that_stepped_over_the_modules_allocation_is_swept_again(monkeypatch):
    out = run(monkeypatch, ["s0s00L0", "s0s0E0L0"])
    assert not out.problems and out.enomem["ECHO"] == 1
    assert out.trace["ECHO"] == "s0s00L00x|s0s0E0L00x"


def test_rounds_are_bounded(monkeypatch):
    out = run(monkeypatch, ["s00"] * sweep.ROUNDS)
    assert out.enomem["ECHO"] == 0 and out.trace["ECHO"].count("|") == sweep.ROUNDS - 1


@pytest.mark.parametrize(("replies", "lost", "send_errno", "problem"), [
    ([0], 0, 0, ""),
    ([ENOMEM], 0, 0, ""),
    ([], 1, 0, ""),
    ([], 0, errno.ENOBUFS, ""),
    ([0, 0], 0, 0, "2 replies to one request"),
    ([0], 1, 0, "a reply arrived and was also counted lost"),
    ([-errno.EINVAL], 0, 0, "status EINVAL (expected 0 or -ENOMEM)"),
    ([0], 0, errno.ENOBUFS, "a request whose send failed was answered"),
])
def test_judge(replies, lost, send_errno, problem):
    rec = {"injected": True, "lost": lost, "replies": replies}
    got = sweep.judge(sweep.Request("ECHO", 1, lambda: b""), rec, [FakeReply(s) for s in replies], send_errno)
    assert got == problem


def test_an_error_with_nothing_failed_is_a_problem_and_the_baseline_status_is_not():
    req = sweep.Request("BENCH_RESULT", 8, lambda: b"", baseline_ok=(0, -errno.ENODATA), expected=-errno.ENODATA)
    rec = {"injected": False, "lost": 0, "replies": [ENOMEM]}
    assert sweep.judge(req, rec, [FakeReply(ENOMEM)], 0) == "ENOMEM with no allocation failed"
    rec["replies"] = [-errno.ENODATA]
    assert sweep.judge(req, rec, [FakeReply(-errno.ENODATA)], 0) == ""


def test_a_kernel_without_fault_injection_skips_saying_why(monkeypatch, tmp_path):
    monkeypatch.setattr(sweep, "FAIL_NTH", str(tmp_path / "fail-nth"))
    assert sweep.sweep(None) == {"ok": True, "skipped": "no fail-nth (CONFIG_FAULT_INJECTION)"}
