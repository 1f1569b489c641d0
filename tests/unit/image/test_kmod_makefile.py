"""``make -C kmod`` by hand: it finds the newest installed cloud headers, or says which package to install."""

import shutil
import subprocess
from pathlib import Path

import pytest

KMOD = Path(__file__).resolve().parents[3] / "kmod"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", str(KMOD), "C=0", *args], capture_output=True, text=True, check=False)


def _fake_headers(root: Path, release: str) -> Path:
    tree = root / f"linux-headers-{release}"
    tree.mkdir(parents=True)
    (tree / "Makefile").write_text("modules:\n\t@echo fake build in $(CURDIR) for $(M)\n")
    return tree


def test_the_newest_installed_cloud_headers_are_picked(tmp_path):
    _fake_headers(tmp_path, "6.1.0-9-cloud-amd64")
    newest = _fake_headers(tmp_path, "6.1.0-57-cloud-amd64")
    result = _make(f"HEADERS_GLOB={tmp_path}/linux-headers-*-cloud-amd64")
    assert result.returncode == 0, result.stderr
    assert f"kmod: building against {newest}" in result.stdout
    assert f"fake build in {newest} for {KMOD}" in result.stdout


def test_no_headers_names_the_package(tmp_path):
    result = _make(f"HEADERS_GLOB={tmp_path}/linux-headers-*-cloud-amd64")
    assert result.returncode != 0
    assert "sudo apt-get install linux-headers-cloud-amd64" in result.stderr and "KDIR=" in result.stderr


def test_a_kdir_that_is_not_a_build_tree_names_its_package(tmp_path):
    result = _make(f"KDIR={tmp_path}/linux-headers-6.1.0-56-cloud-amd64")
    assert result.returncode != 0
    assert "sudo apt-get install linux-headers-6.1.0-56-cloud-amd64" in result.stderr


def test_abi_dump_needs_no_headers(tmp_path):
    result = _make(f"HEADERS_GLOB={tmp_path}/none-*", "-n", "abi_dump")
    assert result.returncode == 0, result.stderr
