"""Hosts of a multi-host run: their facts, what refuses one, the ssh config and the xdist specs cnlab writes."""

from __future__ import annotations

import pytest

from lab import __version__
from lab.engine.hosts import host_facts, mismatch, write_ssh_config, xspec
from lab.errors import UsageError

LOCAL = {"version": "0.1.0", "module_source_hash": "aaaa", "qemu": "QEMU emulator version 7.2", "accel": "tcg"}


def test_this_hosts_facts(tmp_path, monkeypatch):
    monkeypatch.setenv("CNLAB_CACHE", str(tmp_path))
    facts = host_facts()
    assert facts["version"] == __version__ and len(facts["module_source_hash"]) == 16
    assert facts["cpus"] >= 1 and facts["accel"]


@pytest.mark.parametrize(("change", "reason"), [
    ({"version": "0.2.0"}, "cnlab 0.2.0 is not the local 0.1.0"),
    ({"module_source_hash": "bbbb"}, "module source hash bbbb is not the local aaaa (its kmod/ differs)"),
    ({"qemu": ""}, "no qemu-system-x86_64"),
])
def test_a_host_that_differs_is_refused_with_one_reason(change, reason):
    assert mismatch(LOCAL, {**LOCAL, **change}).startswith(reason)


def test_a_matching_host_is_accepted_whatever_its_accelerator():
    assert mismatch(LOCAL, {**LOCAL, "accel": "kvm", "cpus": 64}) is None


def test_the_ssh_config_pins_keys_before_the_users_own(tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    user = tmp_path / "user_config"
    user.write_text("Host h1\n  HostName 10.0.0.1\n  StrictHostKeyChecking no\n")
    lines = write_ssh_config(tmp_path / "out" / "ssh_config", known, user).read_text().splitlines()
    assert lines[0] == "StrictHostKeyChecking yes" and "BatchMode yes" in lines
    assert f"UserKnownHostsFile {known}" in lines
    assert lines[-1] == f"Include {user}"  # ssh keeps the first value: the user's "no" cannot undo the pin
    with pytest.raises(UsageError, match="--known-hosts"):
        write_ssh_config(tmp_path / "c", tmp_path / "missing", None)
    with pytest.raises(UsageError, match="--ssh-config"):
        write_ssh_config(tmp_path / "c", None, tmp_path / "missing")


def test_xdist_specs(tmp_path):
    config = tmp_path / "ssh_config"
    assert xspec("root@h1", config, "/venv/bin/python") == f"ssh_config={config}//ssh=root@h1//python=/venv/bin/python"
    assert xspec("root@h1", config, "/p", 2).startswith("2*ssh_config=")
    for bad in ("", "root@h1 -oProxyCommand=x", "a//b"):
        with pytest.raises(UsageError, match="not a host"):
            xspec(bad, config, "/p")
