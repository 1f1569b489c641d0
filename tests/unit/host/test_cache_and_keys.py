"""Cache keys, atomic publishing and per-lab key generation."""

import stat

import pytest

from lab.host.cache import cache_root, content_key, hash_tree, publish_dir
from lab.image.keys import KNOWN_HOSTS_NAME, ensure_keys


def test_content_key_is_stable_and_input_sensitive():
    assert content_key({"a": 1, "b": [2]}) == content_key({"b": [2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def test_hash_tree_sees_content_and_names(tmp_path):
    (tmp_path / "a.c").write_text("int x;")
    first = hash_tree(tmp_path, ["*.c"])
    (tmp_path / "a.c").write_text("int y;")
    second = hash_tree(tmp_path, ["*.c"])
    (tmp_path / "notes.txt").write_text("ignored")
    assert first != second and hash_tree(tmp_path, ["*.c"]) == second


def test_publish_dir_is_all_or_nothing(tmp_path):
    final = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with publish_dir(final) as scratch:
            (scratch / "half").write_text("x")
            raise RuntimeError("build failed")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with publish_dir(final) as scratch:
        (scratch / "whole").write_text("x")
    assert (final / "whole").exists()


def test_cache_root_honours_the_environment(tmp_path):
    assert cache_root({"CNLAB_CACHE": str(tmp_path)}) == tmp_path
    assert cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "cnlab"


def test_keys_are_private_and_pinned(tmp_path):
    keys = ensure_keys(tmp_path / "keys")
    for private in (keys.client_key, keys.host_key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert keys.known_hosts.read_text().startswith(KNOWN_HOSTS_NAME + " ecdsa-sha2-nistp256 ")
    host_pub = keys.host_pub.read_text().split()[1]
    assert host_pub in keys.known_hosts.read_text()
    again = ensure_keys(tmp_path / "keys")
    assert again.known_hosts.read_text() == keys.known_hosts.read_text()  # generated once per lab


def test_a_lab_with_keys_of_another_type_gets_a_new_pinned_set(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "id_ed25519").write_text("old client key")
    (folder / "known_hosts").write_text(KNOWN_HOSTS_NAME + " ssh-ed25519 AAAAold\n")
    keys = ensure_keys(folder)
    assert keys.client_key.exists() and keys.host_key.exists()
    pinned = keys.known_hosts.read_text().split()
    assert pinned[:3] == [KNOWN_HOSTS_NAME] + keys.host_pub.read_text().split()[:2]
