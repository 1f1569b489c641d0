"""cnlab cache: the listing and prune as a user sees them."""

import os
import time

import pytest

from lab.cli.cache_cmd import human_age, human_size, parse_duration
from lab.cli.main import main
from lab.host.cache import BUILT_STAMP, USED_STAMP, lease, publish_dir


def _artefact(cache, kind, key, size, used_days_ago):
    with publish_dir(cache / kind / key) as scratch:
        (scratch / "payload").write_bytes(os.urandom(size))
    stamp = time.time() - used_days_ago * 86400
    (cache / kind / key / USED_STAMP).touch()
    for name in (USED_STAMP, BUILT_STAMP):
        os.utime(cache / kind / key / name, (stamp, stamp))


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600),
                                               ("1d12h", 129600), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7 days", "-1d", "7x"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_sizes_and_ages_read_like_du_and_ls():
    assert human_size(500) == "500 B" and human_size(176 << 20) == "176 MiB" and human_size(3 << 29) == "1.5 GiB"
    assert human_age(30) == "30 s" and human_age(600) == "10 min" and human_age(3 * 86400) == "3 d"


def test_list_and_prune_through_the_command_line(tmp_path, capsys):
    cache = tmp_path / "cache"
    _artefact(cache, "rootfs", "aaaa", 100_000, 0)
    _artefact(cache, "rootfs", "bbbb", 200_000, 9)
    _artefact(cache, "kmod", "cccc", 50_000, 20)
    held = lease(cache / "kmod" / "cccc")
    assert main(["--cache", str(cache), "cache"]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines()[0].startswith(f"cache {cache}: ") and "3 artefacts" in listing
    assert "in use" in next(line for line in listing.splitlines() if "cccc" in line)
    assert main(["--cache", str(cache), "cache", "prune", "--keep-last", "0", "--dry-run"]) == 0
    assert "would remove rootfs     bbbb" in capsys.readouterr().out and (cache / "rootfs" / "bbbb").exists()
    assert main(["--cache", str(cache), "cache", "prune", "--keep-last", "0", "--older-than", "7d"]) == 0
    out = capsys.readouterr().out
    assert "removed rootfs     bbbb" in out and "freed 200 KiB: 1 artefact;" in out
    assert "(1 held by a running lab)" in out
    assert not (cache / "rootfs" / "bbbb").exists() and (cache / "kmod" / "cccc").exists()
    assert (cache / "rootfs" / "aaaa").exists()
    held.release()


def test_an_empty_or_missing_cache_lists_nothing(tmp_path, capsys):
    assert main(["--cache", str(tmp_path / "none"), "cache"]) == 0
    assert "0 artefacts" in capsys.readouterr().out
    assert main(["--cache", str(tmp_path / "none"), "cache", "prune"]) == 0
    assert "freed 0 B: 0 artefacts" in capsys.readouterr().out
