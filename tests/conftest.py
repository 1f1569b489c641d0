"""Shared test configuration: the lab tier is opt-in.

Tests marked ``lab`` boot real QEMU guests and load the real module.  They
run when selected with ``-m lab`` or when ``CNLAB_LAB_TESTS=1`` is set (tox's
``lab`` environment does both); otherwise they are skipped with that hint.
"""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    selected = "lab" in (config.getoption("-m") or "") or os.environ.get("CNLAB_LAB_TESTS") == "1"
    if selected:
        return
    skip = pytest.mark.skip(reason="lab test: boots QEMU; run with -m lab or CNLAB_LAB_TESTS=1 (tox -e lab)")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)
