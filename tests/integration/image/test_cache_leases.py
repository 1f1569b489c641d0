"""A real lab holds every cache folder it uses; prune leaves them and frees only what nobody holds."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab.host.inventory import in_use, take_inventory

pytestmark = pytest.mark.lab


def test_a_lab_leases_every_artefact_it_uses(cnlab_lab):
    cnlab_lab.module  # noqa: B018
    folders = {lease.folder for obj in (cnlab_lab.kernel, cnlab_lab.image, cnlab_lab.module) for lease in obj.leases}
    assert {f.parent.name for f in folders} == {"kernels", "rootfs", "moddisk", "initramfs", "pvh", "kmod"}
    assert all(in_use(folder) for folder in folders)
    # another process (cnlab cache) sees them as held
    listing = subprocess.run([sys.executable, "-m", "lab.cli", "--cache", str(cnlab_lab.cache), "cache"],
                             capture_output=True, text=True, check=True).stdout
    held = {line.split()[1] for line in listing.splitlines() if line.endswith("in use")}
    assert {f.name for f in folders} <= held
    in_cache = {a.path for a in take_inventory(cnlab_lab.cache).artefacts if a.in_use}
    assert folders <= in_cache
