"""Bring-your-own kernel checks (no QEMU)."""

import pytest

from lab.errors import HostSetupError
from lab.image.kernel import custom_kernel, release_from_bzimage


def _bzimage(path, release="6.9.0-test"):
    blob = bytearray(0x1000)
    blob[0x202:0x206] = b"HdrS"
    blob[0x20E:0x210] = (0x400).to_bytes(2, "little")
    version = f"{release} (builder@host) #1 SMP".encode()
    blob[0x600:0x600 + len(version)] = version
    path.write_bytes(bytes(blob))
    return path


def _kbuild(tmp_path, release):
    tree = tmp_path / "build"
    (tree / "include/generated").mkdir(parents=True)
    (tree / "include/generated/utsrelease.h").write_text(f'#define UTS_RELEASE "{release}"\n')
    return tree


def test_release_is_read_from_the_bzimage(tmp_path):
    assert release_from_bzimage(_bzimage(tmp_path / "bz")) == "6.9.0-test"
    (tmp_path / "junk").write_bytes(b"\0" * 4096)
    assert release_from_bzimage(tmp_path / "junk") is None


def test_matching_tree_is_accepted(tmp_path):
    spec = custom_kernel(_bzimage(tmp_path / "bz"), _kbuild(tmp_path, "6.9.0-test"))
    assert spec.release == "6.9.0-test" and spec.source == "custom"


@pytest.mark.parametrize(
    ("kind", "message"),
    [("missing", "kernel image not found"), ("junk", "is not a bzImage"),
     ("wrong-tree", "is the build tree of 6.8.0, but"), ("wrong-modules", "is not /lib/modules/6.9.0-test")],
)
def test_mismatches_are_clear_errors(tmp_path, kind, message):
    image = _bzimage(tmp_path / "bz")
    kbuild, modules = None, None
    if kind == "missing":
        image = tmp_path / "nope"
    elif kind == "junk":
        image = tmp_path / "junk"
        image.write_bytes(b"\0" * 4096)
    elif kind == "wrong-tree":
        kbuild = _kbuild(tmp_path, "6.8.0")
    else:
        modules = tmp_path / "6.8.0"
        modules.mkdir()
    with pytest.raises(HostSetupError, match=message):
        custom_kernel(image, kbuild, modules)


def test_the_kernel_configuration_says_which_options_it_was_built_with(tmp_path):
    tree = _kbuild(tmp_path, "6.9.0-test")
    spec = custom_kernel(_bzimage(tmp_path / "bz"), tree)
    assert spec.config is None and spec.has_option("DEBUG_KMEMLEAK") is None  # no .config: unknown
    (tree / ".config").write_text("CONFIG_DEBUG_KMEMLEAK=y\nCONFIG_FAILSLAB=m\n# CONFIG_KASAN is not set\n"
                                  "CONFIG_KASAN_GENERIC_X=y\n")
    spec = custom_kernel(_bzimage(tmp_path / "bz"), tree)
    assert spec.has_option("DEBUG_KMEMLEAK") and spec.has_option("FAILSLAB")
    assert spec.has_option("KASAN") is False and spec.has_option("KMEMLEAK") is False
