"""Missing host packages: root installs them, anyone else gets the exact command."""

import pytest

import lab.host.packages as hostdeps
from lab.errors import HostSetupError


def test_non_root_gets_the_package_names_and_the_command(monkeypatch):
    monkeypatch.setattr(hostdeps, "_installed", lambda name: name != "mmdebstrap")
    monkeypatch.setattr(hostdeps.os, "geteuid", lambda: 1000)
    with pytest.raises(HostSetupError) as info:
        hostdeps.ensure_packages()
    message = str(info.value)
    assert "missing Debian packages: mmdebstrap" in message
    assert "sudo apt-get install -y --no-install-recommends mmdebstrap" in message
    assert info.value.exit_status == 2 and "\n" not in message


def test_nothing_missing_does_nothing(monkeypatch):
    monkeypatch.setattr(hostdeps, "_installed", lambda name: True)
    monkeypatch.setattr(hostdeps.subprocess, "run", lambda *a, **k: pytest.fail("ran a command"))
    hostdeps.ensure_packages()


def test_every_required_package_says_why():
    assert all(reason for reason in hostdeps.REQUIRED_PACKAGES.values())
    assert "qemu-system-x86" in hostdeps.REQUIRED_PACKAGES and "openssh-client" in hostdeps.REQUIRED_PACKAGES
