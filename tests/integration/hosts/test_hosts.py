"""One run over several hosts, for real: the hosts are network namespaces on this machine, each with its own
sshd, mount namespace (own home and cache) and veth link (tests/integration/hosts/testhosts.py).

Cost under TCG on the 2-core CI host: the refusal boots nothing (about 3 s); the two-host runs boot one
1-vCPU guest per host and run 1-second scenarios (about 35 s and 30 s); they are ``heavy`` (two guests at
once, run alone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.engine.results import final_records, read_results

from .testhosts import HostNet

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(os.geteuid() != 0, reason="test hosts are namespaces: needs root")]

REPO = Path(__file__).resolve().parents[3]
CNLAB = [sys.executable, "-m", "lab.cli"]


def _scenario(folder: Path, name: str, duration: float = 1.0) -> str:
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\nduration = {duration}\n[guest]\ncpus = 1\n'
                    '[[emulators]]\nname = "generator"\npath = "cbus"\ncontext = "kthread"\nrate = 200\n'
                    '[invariants]\nmax_loss = 0\n')
    return str(path)


@pytest.fixture
def net(cnlab_lab, tmp_path):
    with HostNet(tmp_path / "net", cnlab_lab.cache) as test_net:
        yield test_net


def _hosts_run(net: HostNet, out: Path, files: list[str], *extra: str) -> list[str]:
    return net.client_argv([*CNLAB, "run", "--hosts", ",".join(f"root@{h.name}" for h in net.hosts),
                            "--ssh-config", str(net.ssh_config), "--out", str(out), *extra, *files])


@pytest.mark.heavy
def test_a_run_over_two_hosts_gives_the_results_of_a_local_run(net, cnlab_lab, tmp_path):
    files = [_scenario(tmp_path, name) for name in ("hosts-a", "hosts-b", "hosts-c")]
    env = dict(os.environ, CNLAB_CACHE=str(cnlab_lab.cache))
    local = subprocess.run([*CNLAB, "-q", "run", "-n", "1", "--out", str(tmp_path / "local"), *files], env=env,
                           capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stdout + local.stderr
    net.add_host()
    net.add_host()
    started = time.monotonic()
    done = subprocess.run(_hosts_run(net, tmp_path / "hosts", files), capture_output=True, text=True, timeout=600)
    print(f"two-host run of 3 scenarios: {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stdout + done.stderr
    here = {(r.scenario, r.status) for r in read_results(tmp_path / "local" / "results.jsonl")}
    records = read_results(tmp_path / "hosts" / "results.jsonl")
    assert {(r.scenario, r.status) for r in records} == here
    assert len(records) == 3  # each scenario once
    assert {r.env["host"] for r in records} == {"root@h1", "root@h2"}  # both hosts worked, each record says which
    for record in records:
        assert record.env["module_source_hash"] == cnlab_lab.module.source_hash
    for host in net.hosts:  # each host ran its guests from its own cache
        assert list((host.folder / "home" / ".cache" / "cnlab" / "kmod").iterdir())


@pytest.mark.heavy
def test_a_host_killed_mid_run_loses_no_scenario(net, tmp_path):
    names = [f"lost-{i}" for i in range(4)]
    files = [_scenario(tmp_path, name, 2.0) for name in names]
    net.add_host()
    doomed = net.add_host()
    proc = subprocess.Popen(_hosts_run(net, tmp_path / "out", files), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # the first result: both hosts have booted and are running scenarios
        seen.append(line)
        if "PASSED (" in line or time.monotonic() > deadline:
            break
    doomed.kill()  # its sshd, its worker and its guest, all at once
    rest, _ = proc.communicate(timeout=600)
    output = "".join(seen) + rest
    print(output)
    assert proc.returncode == 0, output
    attempts = read_results(tmp_path / "out" / "results.jsonl")
    assert sorted(r.scenario for r in attempts) == names, output  # every scenario exactly once
    assert all(r.passed for r in attempts)
    assert {r.env["host"] for r in attempts} <= {"root@h1", "root@h2"}
    assert final_records(attempts) == attempts
    assert "root@h2" in output  # the loss was reported
    assert any(r.env["host"] == "root@h1" for r in attempts)


def test_a_host_with_other_module_sources_is_refused(net, tmp_path):
    other = tmp_path / "kmod"
    shutil.copytree(REPO / "kmod", other, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*"))
    source = next(other.glob("*.c"))
    source.write_text(source.read_text() + "\n/* another module source */\n")
    net.add_host()
    net.add_host(binds=[(other, REPO / "kmod")])
    files = [_scenario(tmp_path, "refused")]
    done = subprocess.run(_hosts_run(net, tmp_path / "out", files), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr.strip()
    assert err.startswith("cnlab: error: host root@h2: module source hash ") and "its kmod/ differs" in err, err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "results.jsonl").exists()  # nothing ran
