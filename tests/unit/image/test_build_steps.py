"""Image artefacts announce their build (or that they were cached) and stay leased while in use."""

import logging

import pytest

from lab.host.inventory import in_use, take_inventory
from lab.host.prune import plan_prune, prune
from lab.host.steps import STEP_LOGGER
from lab.image.build import _cached


@pytest.fixture()
def steps():
    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append((record.step_event.name, record.step_event.state))

    handler, logger = Collect(), logging.getLogger(STEP_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def _build(folder):
    (folder / "rootfs.ext4").write_bytes(b"\0" * 4096)


def test_a_build_is_a_step_and_a_second_look_is_cached(tmp_path, steps):
    folder, key, built, held = _cached(tmp_path, "rootfs", {"x": 1}, _build, False, "mmdebstrap bookworm")
    assert built and steps == [("root disk", "start"), ("root disk", "done")]
    assert held.held and in_use(folder) and (folder / "inputs.json").exists()
    steps.clear()
    again = _cached(tmp_path, "rootfs", {"x": 1}, _build, False)
    assert again[:3] == (folder, key, False) and steps == [("root disk", "cached")]
    held.release()
    again[3].release()
    assert not in_use(folder)


def test_prune_skips_what_a_lab_holds_and_a_pruned_artefact_is_rebuilt(tmp_path, steps):
    folder, _, _, held = _cached(tmp_path, "rootfs", {"x": 1}, _build, False)
    inventory = take_inventory(tmp_path)
    result = prune(inventory, plan_prune(inventory, keep_last=0, older_than=None, now=0))
    assert not result.removed and (folder / "rootfs.ext4").exists()
    held.release()
    inventory = take_inventory(tmp_path)
    assert len(prune(inventory, plan_prune(inventory, keep_last=0, older_than=None, now=0)).removed) == 1
    steps.clear()
    _, _, built, held = _cached(tmp_path, "rootfs", {"x": 1}, _build, False)
    assert built and ("root disk", "done") in steps and held.held
