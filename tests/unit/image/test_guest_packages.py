"""Extra guest packages: names checked, looked up on the host or in mmdebstrap's log, the root disk key per list
(the default unchanged), saved states keyed by the image, and the command line's one-line exit-2 errors."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from lab.cli import main as cli
from lab.config import check_package_names, load_config
from lab.errors import BuildError, ConfigError
from lab.guest.snapshot import snapshot_inputs
from lab.host.cache import content_key
from lab.image import build, guest_packages
from lab.image.guest_packages import UnknownPackage, unknown_in_log, unknown_on_host

#: ``apt-cache policy forkstat nosuchpkg sshd-virtual localonly`` as bookworm's apt prints it (an unknown name is
#: left out; a virtual package has no candidate; a package only dpkg knows has no repository line).
POLICY = """\
forkstat:
  Installed: (none)
  Candidate: 0.03.01-1
  Version table:
     0.03.01-1 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
sshd-virtual:
  Installed: (none)
  Candidate: (none)
  Version table:
localonly:
  Installed: 1.0
  Candidate: 1.0
  Version table:
 *** 1.0 100
        100 /var/lib/dpkg/status
"""


@pytest.mark.parametrize("name", ["forkstat", "stress-ng", "libstdc++6", "python3.11", "g++", "0ad"])
def test_debian_package_names_pass(name):
    assert check_package_names([name, name], "x") == (name,)


@pytest.mark.parametrize("name", ["Forkstat", "a", "-rf", "+x", "foo;rm -rf /", "foo bar", "foo:i386", "foo_bar",
                                  "", 3, "forkstat=1.0"])
def test_anything_else_is_a_config_error_naming_it(name):
    with pytest.raises(ConfigError, match=rf"^where: {__import__('re').escape(repr(name))} is not a Debian package "
                                          "name"):
        check_package_names(["forkstat", name], "where")


def test_names_come_back_sorted_and_once():
    assert check_package_names(["trace-cmd", "forkstat", "strace", "forkstat"], "x") == (
        "forkstat", "strace", "trace-cmd")


def _host(monkeypatch, tmp_path, suite="bookworm", lists=True, policy=POLICY):
    (tmp_path / "lists").mkdir()
    if lists:
        (tmp_path / "lists" / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4").touch()
    monkeypatch.setattr(guest_packages, "host_suite", lambda: suite)
    monkeypatch.setattr(guest_packages.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, policy, "")

    monkeypatch.setattr(guest_packages.subprocess, "run", run)
    return tmp_path / "lists", calls


def test_the_hosts_apt_names_the_unknown_ones(monkeypatch, tmp_path):
    lists, calls = _host(monkeypatch, tmp_path)
    names = ["forkstat", "nosuchpkg", "sshd-virtual", "localonly"]
    assert unknown_on_host(names, "bookworm", lists) == ["localonly", "nosuchpkg", "sshd-virtual"]
    assert calls == [["/usr/bin/apt-cache", "policy", *names]]


def test_a_host_of_another_suite_or_without_lists_cannot_tell(monkeypatch, tmp_path):
    lists, calls = _host(monkeypatch, tmp_path, suite="trixie")
    assert unknown_on_host(["nosuchpkg"], "bookworm", lists) is None
    monkeypatch.setattr(guest_packages, "host_suite", lambda: "bookworm")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert unknown_on_host(["nosuchpkg"], "bookworm", empty) is None
    assert calls == []


def test_mmdebstraps_unable_to_locate_lines_name_the_packages():
    log = ("I: installing remaining packages inside the chroot...\nE: Unable to locate package nosuchpkg\n"
           "E: Unable to locate package other-one\nE: setup failed: E: apt-get --yes install ... failed\n")
    assert unknown_in_log(log) == ["nosuchpkg", "other-one"]
    assert unknown_in_log("E: mmdebstrap failed to run\n") == []


# ---------------------------------------------------------------- the root disk's key
def test_no_extra_package_keeps_the_root_disks_key_and_each_list_has_its_own():
    default = build._rootfs_inputs()
    assert "extra_packages" not in default and build._rootfs_inputs(()) == default
    assert set(default) == {"recipe", "suite", "packages", "overlay", "pyroute2", "dpkg_excludes"}
    one = build._rootfs_inputs(("strace", "forkstat"))
    assert one["extra_packages"] == ["forkstat", "strace"]
    assert content_key(one) == content_key(build._rootfs_inputs(("forkstat", "strace", "forkstat")))
    keys = {content_key(default), content_key(one), content_key(build._rootfs_inputs(("forkstat",)))}
    assert len(keys) == 3


def test_saved_states_are_keyed_by_the_image_so_another_root_disk_never_restores_them(tmp_path):
    from lab.guest.accel import Accel
    from lab.guest.machine import GuestSpec
    from lab.image.build import GuestImage
    from lab.image.kernel import KernelSpec
    from lab.image.keys import ensure_keys

    kernel = KernelSpec(image=tmp_path / "vmlinuz", release="test", modules_dir=None, kbuild_dir=None)
    kernel.image.write_bytes(b"kernel")
    # the manifest's name is the content key of everything in it, the root disk's key and inputs included
    manifests = [content_key({"rootfs": {"key": content_key(build._rootfs_inputs(p))}}) for p in ((), ("forkstat",))]
    image = GuestImage(kernel=kernel, rootfs=tmp_path / "root.ext4", modules_disk=None, initramfs=tmp_path / "b",
                       keys=ensure_keys(tmp_path / "keys"), manifest_path=tmp_path / f"{manifests[0]}.json")
    spec = GuestSpec(image=image, accel=Accel("kvm", "test"), name="x")
    other = dataclasses.replace(spec, image=dataclasses.replace(image, manifest_path=tmp_path / f"{manifests[1]}.json"))
    assert manifests[0] != manifests[1]
    assert content_key(snapshot_inputs(spec)) != content_key(snapshot_inputs(other))


# ---------------------------------------------------------------- unknown packages stop the build
def test_a_package_the_host_knows_is_missing_stops_before_mmdebstrap(monkeypatch):
    monkeypatch.setattr(build, "unknown_on_host", lambda names, suite: ["nosuchpkg"])
    with pytest.raises(UnknownPackage) as caught:
        build._check_known(build._rootfs_inputs(("forkstat", "nosuchpkg")))
    assert caught.value.exit_status == 2 and caught.value.names == ("nosuchpkg",)
    assert str(caught.value) == ("unknown Debian package for the guest: 'nosuchpkg' (not in bookworm: the host's "
                                 "apt-cache policy has no candidate); fix [lab] packages, --package or the plugin "
                                 "that asks for it")


def test_without_the_hosts_word_mmdebstraps_log_names_the_unknown_package(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "require_tool", lambda tool, package: f"/usr/bin/{tool}")
    monkeypatch.setattr(build.os, "geteuid", lambda: 0)
    monkeypatch.setattr(build.shutil, "copytree", lambda *a, **k: None)
    seen = []

    def failing(argv, log_path, what, **kwargs):
        seen.append(argv)
        with open(log_path, "a") as log:
            log.write("I: installing remaining packages inside the chroot...\n"
                      "E: Unable to locate package nosuchpkg\nE: mmdebstrap failed to run\n")
        raise BuildError(f"{what} failed (exit 1): E: mmdebstrap failed to run")

    monkeypatch.setattr(build, "run_logged", failing)
    log = tmp_path / "mmdebstrap.log"
    log.write_text("E: Unable to locate package from-an-earlier-build\n")  # not this build's: not read
    inputs = build._rootfs_inputs(("forkstat", "nosuchpkg"))
    with pytest.raises(UnknownPackage, match=r"^unknown Debian package for the guest: 'nosuchpkg' \(not in bookworm: "
                                             r"mmdebstrap: Unable to locate package\)"):
        build._build_rootfs(tmp_path, inputs, log)
    include = [a for a in seen[0] if a.startswith("--include=")]
    assert include == ["--include=openssh-server,python3,kmod,iproute2,procps,util-linux,forkstat,nosuchpkg"]

    def other_failure(argv, log_path, what, **kwargs):
        raise BuildError("mmdebstrap (the guest root filesystem) failed (exit 1): E: no space left")

    monkeypatch.setattr(build, "run_logged", other_failure)
    with pytest.raises(BuildError, match="no space left") as caught:
        build._build_rootfs(tmp_path, inputs, log)
    assert not isinstance(caught.value, UnknownPackage)


# ---------------------------------------------------------------- the config and the command line
def test_the_configs_packages_and_the_command_lines_merge_sorted(tmp_path):
    path = tmp_path / "cnlab.toml"
    path.write_text('[lab]\npackages = ["strace", "forkstat"]\n')
    assert load_config(path, packages=["trace-cmd", "strace"]).packages == ("forkstat", "strace", "trace-cmd")
    assert load_config(None).packages == ()
    path.write_text('[lab]\npackages = "forkstat"\n')
    with pytest.raises(ConfigError, match=r"\[lab\] packages: expected an array of strings"):
        load_config(path)


def _kernel(tmp_path: Path) -> Path:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"kernel")
    return kernel


def test_a_bad_package_name_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--package", "foo;rm", "plugins"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cnlab: error: --package: 'foo;rm' is not a Debian package name")


def test_an_unknown_package_stops_image_build_with_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(build, "unknown_on_host", lambda names, suite: [n for n in names if n == "nosuchpkg"])

    def never(*args, **kwargs):
        raise AssertionError("mmdebstrap must not run")

    monkeypatch.setattr(build, "_build_rootfs", never)
    from lab.guest import labsetup
    from lab.image.kernel import KernelSpec

    monkeypatch.setattr(labsetup, "custom_kernel", lambda image, kbuild, modules: KernelSpec(
        image=image, release="test", modules_dir=None, kbuild_dir=None))
    status = cli.main(["--cache", str(tmp_path / "cache"), "--kernel", str(_kernel(tmp_path)), "--package",
                       "nosuchpkg", "--package", "forkstat", "image", "build", "--no-module"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.strip().splitlines() == [
        "cnlab: error: unknown Debian package for the guest: 'nosuchpkg' (not in bookworm: the host's apt-cache "
        "policy has no candidate); fix [lab] packages, --package or the plugin that asks for it"]
    assert "Traceback" not in err


def test_the_lab_of_a_command_gets_the_configs_the_command_lines_and_the_plugins_packages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cnlab.toml").write_text('[lab]\npackages = ["strace"]\n')
    args = cli.build_parser().parse_args(["-p", "cnlab_plugins.forkstat", "--package", "trace-cmd", "run"])
    assert cli._lab(args).options.packages == ("forkstat", "strace", "trace-cmd")
    (tmp_path / "cnlab.toml").unlink()
    assert cli._lab(cli.build_parser().parse_args(["run"])).options.packages == ()
