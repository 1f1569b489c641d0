"""The cache inventory, leases and prune: a held artefact is never removed, and prune frees what it says."""

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.host.cache import BUILT_STAMP, USED_STAMP, file_lock, lease, publish_dir
from lab.host.inventory import disk_usage, in_use, take_inventory
from lab.host.prune import plan_prune, prune

HOUR = 3600.0


def _artefact(cache: Path, kind: str, key: str, size: int, used_hours_ago: float, now: float) -> Path:
    with publish_dir(cache / kind / key) as scratch:
        (scratch / "payload").write_bytes(os.urandom(size))
    folder = cache / kind / key
    (folder / USED_STAMP).touch()
    stamp = now - used_hours_ago * HOUR
    os.utime(folder / USED_STAMP, (stamp, stamp))
    os.utime(folder / BUILT_STAMP, (stamp - HOUR, stamp - HOUR))
    return folder


@pytest.fixture()
def cache(tmp_path):
    now = time.time()
    root = tmp_path / "cache"
    _artefact(root, "rootfs", "new", 200_000, 1, now)
    _artefact(root, "rootfs", "old", 300_000, 48, now)
    _artefact(root, "rootfs", "oldest", 100_000, 24 * 30, now)
    _artefact(root, "kmod", "only", 10_000, 100, now)
    _artefact(root, "snapshots", "unknown-kind", 10_000, 1000, now)
    (root / "keys").mkdir()
    (root / "keys" / "id_ecdsa").write_text("secret")
    (root / "accel.json").write_text("{}")
    return root, now


def test_inventory_lists_artefacts_by_kind_with_size_age_and_last_use(cache):
    root, now = cache
    inventory = take_inventory(root)
    by_key = {a.key: a for a in inventory.artefacts}
    assert set(by_key) == {"new", "old", "oldest", "only", "unknown-kind"}
    assert by_key["old"].kind == "rootfs" and by_key["old"].size >= 300_000
    assert abs(now - by_key["old"].last_used - 48 * HOUR) < 5
    assert abs(now - by_key["old"].built - 49 * HOUR) < 5
    assert not by_key["unknown-kind"].prunable and by_key["only"].prunable
    assert inventory.other_bytes > 0 and inventory.total_bytes == disk_usage(root)


def test_prune_keeps_a_leased_artefact_and_frees_what_it_says(cache):
    root, now = cache
    held = lease(root / "rootfs" / "oldest")
    assert held is not None and in_use(root / "rootfs" / "oldest")
    before = disk_usage(root)
    inventory = take_inventory(root)
    # the lease made "oldest" the last used rootfs: with "new" it is among the two kept
    plan = plan_prune(inventory, keep_last=2, older_than=None, now=now)
    assert {a.key for a in plan.remove} == {"old"}
    reasons = {a.key: why for a, why in plan.keep}
    assert reasons["oldest"] == "in use by a running lab" and "last used" in reasons["new"]
    assert reasons["unknown-kind"] == "no lab leases this kind"
    result = prune(inventory, plan)
    assert [a.key for a in result.removed] == ["old"]
    assert (root / "rootfs" / "oldest" / "payload").exists() and not (root / "rootfs" / "old").exists()
    assert before - disk_usage(root) == result.freed
    held.release()
    assert not in_use(root / "rootfs" / "oldest")


def test_a_lease_held_by_another_process_stops_the_removal_itself(cache):
    """The plan was made while nobody held it; a lab took it before the removal: it stays."""
    root, now = cache
    folder = root / "rootfs" / "old"
    inventory = take_inventory(root)
    plan = plan_prune(inventory, keep_last=0, older_than=None, now=now)
    assert "old" in {a.key for a in plan.remove}
    code = ("import sys, time; from pathlib import Path; from lab.host.cache import lease; "
            "held = lease(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = prune(inventory, plan)
    finally:
        holder.communicate("")
    assert "old" in {a.key for a in result.held} and (folder / "payload").exists()
    assert {a.key for a in result.removed} == {"new", "oldest", "only"}


def test_older_than_keeps_what_was_used_recently(cache):
    root, now = cache
    plan = plan_prune(take_inventory(root), keep_last=0, older_than=7 * 24 * HOUR, now=now)
    assert {a.key for a in plan.remove} == {"oldest"}
    plan = plan_prune(take_inventory(root), keep_last=0, older_than=None, now=now)
    assert {a.key for a in plan.remove} == {"new", "old", "oldest", "only"}


def test_a_pruned_folder_cannot_be_leased(cache):
    root, now = cache
    inventory = take_inventory(root)
    prune(inventory, plan_prune(inventory, keep_last=0, older_than=None, now=now))
    assert lease(root / "rootfs" / "new") is None


def test_a_lease_records_the_last_use_and_does_not_travel(cache, tmp_path):
    root, _ = cache
    folder = root / "kmod" / "only"
    before = (folder / USED_STAMP).stat().st_mtime
    held = lease(folder)
    assert (folder / USED_STAMP).stat().st_mtime > before
    copy = pickle.loads(pickle.dumps(held))
    assert held.held and not copy.held
    copy.release()  # releasing the copy must not drop the original's lock
    assert in_use(folder)
    del held
    assert not in_use(folder)


def test_scratch_of_a_running_build_stays_an_abandoned_one_goes(cache):
    root, now = cache
    live = root / "rootfs" / ".building.abc"
    live.mkdir()
    dead = root / "kmod" / ".interrupted.xyz"
    dead.mkdir()
    (dead / "junk").write_bytes(b"x" * 5000)
    inventory = take_inventory(root)
    with file_lock(root / "locks" / "rootfs.lock"):
        result = prune(inventory, plan_prune(inventory, keep_last=5, older_than=None, now=now))
    assert live.exists() and not dead.exists() and result.scratch_removed == (dead,)
    assert result.freed >= 5000 and not result.removed


def test_plan_refuses_a_negative_keep_last(cache):
    with pytest.raises(ValueError):
        plan_prune(take_inventory(cache[0]), keep_last=-1, older_than=None, now=0)


def test_each_list_of_guest_packages_keeps_its_last_root_disk(tmp_path):
    import json

    now = time.time()
    root = tmp_path / "cache"
    for key, extra, hours in (("plain-new", None, 1), ("plain-old", None, 5), ("fork-old", ["forkstat"], 9),
                              ("fork-new", ["forkstat"], 3), ("four", ["forkstat", "strace"], 30)):
        folder = _artefact(root, "rootfs", key, 1000, hours, now)
        inputs = {"recipe": 3} if extra is None else {"recipe": 3, "extra_packages": extra}
        (folder / "inputs.json").write_text(json.dumps(inputs))
    inventory = take_inventory(root)
    assert {a.key: a.variant for a in inventory.artefacts} == {
        "plain-new": "", "plain-old": "", "fork-old": "+forkstat", "fork-new": "+forkstat", "four": "+forkstat,strace"}
    plan = plan_prune(inventory, keep_last=1, older_than=None, now=now)
    assert sorted(a.key for a in plan.remove) == ["fork-old", "plain-old"]
