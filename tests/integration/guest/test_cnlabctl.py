"""cnlabctl in a real guest, through ``cnlab exec`` (it must be on the guest's PATH), its figures checked
against independent reads: the module's debugfs table (``/sys/kernel/debug/cnlab/cbus``, printed by the
module itself, not through the control connector) and what a consumer received."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[3]

# Markers split the output; the watch must have joined group 30 (its header line) before the generator starts.
SCRIPT = r"""
set -e
command -v cnlabctl
cnlabctl watch 30 --count 600 --seconds 120 --interval 0.5 > /tmp/watch.txt &
watch=$!
until grep -q '^watching group 30' /tmp/watch.txt; do sleep 0.05; done
cnlabctl start --id 0 --group 30 --rate 2000 --count 300 --path cbus --burst 32
wait $watch
echo @@watch; cat /tmp/watch.txt
echo @@gen; cnlabctl gen 0 --json
echo @@stats; cnlabctl stats --json
echo @@debugfs; cat /sys/kernel/debug/cnlab/cbus
echo @@reset; cnlabctl stats --reset-hwm --json
echo @@debugfs2; cat /sys/kernel/debug/cnlab/cbus
echo @@fault; cnlabctl fault queue-limit 64
echo @@debugfs3; cat /sys/kernel/debug/cnlab/cbus
echo @@fault2; cnlabctl fault queue-limit default; cnlabctl fault
echo @@stats_text; cnlabctl stats --cpus
echo @@bad; cnlabctl start --group 40 || echo "exit $?"
"""


def _sections(text: str) -> dict[str, str]:
    out, name = {}, "head"
    for line in text.splitlines():
        if line.startswith("@@"):
            name = line[2:]
            out[name] = ""
        else:
            out[name] = out.get(name, "") + line + "\n"
    return out


def _debugfs_total(text: str) -> dict[str, int]:
    lines = text.splitlines()
    head = lines[1].split()
    total = next(line.split() for line in lines if line.startswith("total"))
    return {k: int(v) for k, v in zip(head[1:-1], total[1:-1], strict=True)}


def test_cnlabctl_in_a_guest_agrees_with_debugfs_and_a_consumer(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "lab", "-q", "exec", "--cpus", "2", "--", "sh", "-c", SCRIPT],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    s = _sections(proc.stdout)
    assert s["head"].splitlines() == ["/usr/local/bin/cnlabctl", "started generator 0: cbus/kthread id 0x3e:1 group 30 "
                                                                 "rate 2000/s cpus 0x3 burst 32"]

    watch = s["watch"].splitlines()
    assert watch[-1].startswith("total: 600 received in ") and ", 0 gaps, 0 enobufs, 0 other messages, 2 streams" \
        in watch[-1], watch
    gen = json.loads(s["gen"])
    assert gen["state"] == 2 and sum(c["generated"] for c in gen["cpus"]) == 600  # done
    stats = json.loads(s["stats"])
    debugfs = _debugfs_total(s["debugfs"])
    # The same counters read two ways: STATS over the connector (cnlabctl) and the module's debugfs table
    for key, column in (("inserted", "inserted"), ("sent", "sent"), ("drop_full", "full"),
                        ("drop_nolistener", "nolisten"), ("queued", "queued"), ("hwm", "hwm")):
        assert stats["total"][key] == debugfs[column], (key, stats["total"], debugfs)
    assert stats["total"]["inserted"] == stats["total"]["sent"] == 600  # and what the consumer received

    # RESET_HWM: the high-water mark restarts at the current depth (0: idle), as debugfs shows too
    assert stats["total"]["hwm"] > 0
    reset = json.loads(s["reset"])
    assert reset["total"]["hwm"] == 0 and _debugfs_total(s["debugfs2"])["hwm"] == 0
    assert reset["total"]["inserted"] == 600  # the counters are not reset, only the high-water mark

    assert s["fault"].strip() == "queue-limit 64 (was 4096)"
    assert s["debugfs3"].startswith("queue_limit 64 ")
    assert s["fault2"].splitlines() == ["queue-limit 4096 (was 64)", "stall-ms 0  alloc-nth 0  queue-limit 4096"]
    text = s["stats_text"].splitlines()
    assert text[0].startswith("queue_limit 4096  alloc_nth 0  stall_ms 0") and text[-1] == "ledger ok"
    assert [line.split()[0] for line in text[2:-1]] == ["0", "1", "total"]
    assert s["bad"].strip() == "exit 2" and "a connector group is 1..32, got '40'" in proc.stdout + proc.stderr
