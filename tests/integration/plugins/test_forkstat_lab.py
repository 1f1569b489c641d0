"""Extra guest packages end to end, as a developer runs them: ``cnlab -p cnlab_plugins.forkstat run
forkstat-storm.toml``. The plugin adds Debian's forkstat to the guest (a root disk variant of its own, built once
and cached), the real forkstat runs on the guest kernel's cn_proc through a fork/exec/exit storm, and what it
printed is reconciled PID by PID against the storm's own record: exactly, and, with forkstat stopped for a second on
a squeezed receive buffer (forkstat-stall.toml), within the drops the kernel counted on its socket. And an unknown
package stops ``cnlab run`` with one line and exit status 2 before anything is built or boots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("forkstat")]

ROOT = Path(__file__).resolve().parents[3]
SCENARIOS = ROOT / "plugins" / "cnlab_plugins" / "scenarios"
SCENARIO = SCENARIOS / "forkstat-storm.toml"
STALL = SCENARIOS / "forkstat-stall.toml"


def _cnlab(*argv: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "plugins")]))
    return subprocess.run([sys.executable, "-m", "lab", *argv], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


def _storm(record: dict) -> tuple[dict, dict, int]:
    report = next(c for c in record["data"]["agent"]["consumers"] if c["name"] == "forkstat")
    (storm,) = report["storms"]
    missing = sum(storm["expected"][k] - storm["seen"][k] for k in ("fork", "exec", "exit"))
    return report, storm, missing


def test_forkstat_on_the_real_cn_proc_reconciles_with_the_storm(tmp_path):
    out = tmp_path / "run"
    proc = _cnlab("-p", "cnlab_plugins.forkstat", "run", "-n", "1", "--out", str(out), str(SCENARIO), str(STALL),
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    records = {r["scenario"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    for record in records.values():
        verdicts = {v["name"]: v for v in record["verdicts"]}
        assert all(v["ok"] for v in verdicts.values()), verdicts
        assert record["env"]["guest_packages"] == {"forkstat": "0.03.01-1"}  # bookworm's, in the root disk variant

    record = records["forkstat-storm"]
    report, storm, missing = _storm(record)
    assert report["forkstat"]["argv"][0] == "/usr/bin/forkstat" and report["forkstat"]["drained"]
    live = json.loads(record["data"]["agent"]["live"][0]["stdout"])
    # the storm's own count, as its stdout says it, is the record forkstat was reconciled against
    assert live["pid"] == storm["pid"] and live["forks"] == storm["children"] > 10
    assert storm["expected"] == {"fork": storm["workers"] + storm["children"], "exec": live["execs"],
                                 "exit": storm["workers"] + storm["children"]}
    assert storm["extra"] == 0 and 0 <= missing <= max(0, report["forkstat"]["socket_drops"])
    verdict = next(v for v in record["verdicts"] if v["name"] == "forkstat")
    assert f"{storm['seen']['fork']}/{storm['expected']['fork']} forks" in verdict["detail"]

    # stopped on a tiny buffer, forkstat misses events, and every one is a message the kernel dropped for it
    report, storm, missing = _storm(records["forkstat-stall"])
    assert {f["name"] for f in records["forkstat-stall"]["faults"]} == {"rcvbuf-squeeze", "forkstat-stall"}
    assert 0 < missing <= report["forkstat"]["socket_drops"] and report["forkstat"]["nobufs"] >= 1
    assert report["forkstat"]["drained"] and storm["extra"] == 0


def test_an_unknown_package_stops_the_run_before_anything_boots(tmp_path):
    out = tmp_path / "run"
    proc = _cnlab("--package", "forkstatt", "-p", "cnlab_plugins.forkstat", "run", "-n", "1", "--out", str(out),
                  str(SCENARIO), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "cnlab: error: unknown Debian package for the guest: 'forkstatt' (not in bookworm")
    assert "Traceback" not in proc.stderr
    assert not any((out / "consoles").glob("*")), "a guest booted"


def test_the_lab_configs_packages_are_in_the_guest(tmp_path):
    # no plugin: [lab] packages alone gives the guest the root disk variant with forkstat
    (tmp_path / "cnlab.toml").write_text('[lab]\npackages = ["forkstat"]\n')
    proc = _cnlab("exec", "--no-module", "--", "dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "forkstat",
                  cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "forkstat 0.03.01-1"
