"""Guest kernels: Debian's cloud kernel (resolved and cached) or one you bring.

A :class:`KernelSpec` names everything a guest and a module build need: the
bzImage, the release string, the matching ``/lib/modules/<release>`` tree and
the kbuild directory to compile out-of-tree modules against.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import HostSetupError
from lab.host.cache import Lease, file_lock, lease, publish_dir, write_json_atomic
from lab.host.packages import require_tool
from lab.host.quiet import logs_dir, run_logged
from lab.host.steps import cached, step

__all__ = ["KernelSpec", "debian_cloud_kernel", "custom_kernel", "DEBIAN_METAPACKAGE"]

DEBIAN_METAPACKAGE = "linux-image-cloud-amd64"


@dataclass(frozen=True)
class KernelSpec:
    """A guest kernel and the trees that belong to it."""

    image: Path
    release: str
    modules_dir: Path | None
    kbuild_dir: Path | None
    package_version: str = ""
    source: str = "debian"
    #: boot it through its PVH entry when it has one (lab.image.pvh); False: always the bzImage
    pvh: bool = True
    #: the kernel's build configuration (``CONFIG_*`` lines), if known
    config: Path | None = None
    #: a shared lock on the cache folder the kernel was unpacked into (``cnlab cache prune`` skips it)
    leases: tuple[Lease, ...] = field(default=(), compare=False, repr=False)

    def has_option(self, name: str) -> bool | None:
        """Whether the kernel was built with ``CONFIG_<name>`` (``=y`` or ``=m``); None when its configuration
        is not known (a custom kernel without its build tree): ask the guest."""
        if self.config is None:
            return None
        try:
            text = self.config.read_text(errors="replace")
        except OSError:
            return None
        return re.search(rf"^CONFIG_{re.escape(name)}=[ym]$", text, re.MULTILINE) is not None

    def describe(self) -> dict:
        return {
            "release": self.release,
            "package_version": self.package_version,
            "source": self.source,
            "image": str(self.image),
        }


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HostSetupError(f"{' '.join(argv)} failed: {result.stderr.strip()[:300]}")
    return result.stdout


def resolve_metapackage(metapackage: str = DEBIAN_METAPACKAGE) -> tuple[str, str]:
    """(image package name, version) that the metapackage currently points at."""
    require_tool("apt-cache", "apt")
    depends = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", metapackage])
    match = re.search(r"Depends: (linux-image-[\w.+-]+)", depends)
    if match is None:
        raise HostSetupError(f"cannot resolve {metapackage}: run 'apt-get update' first")
    package = match.group(1)
    policy = _run(["apt-cache", "policy", package])
    version = re.search(r"Candidate: (\S+)", policy)
    if version is None or version.group(1) == "(none)":
        raise HostSetupError(f"no installable version of {package}: run 'apt-get update' first")
    return package, version.group(1)


APT_LISTS = Path("/var/lib/apt/lists")


def _apt_lists_stamp() -> list[int]:
    """Changes whenever 'apt-get update' brings new package lists."""
    try:
        return sorted(p.stat().st_mtime_ns for p in APT_LISTS.glob("*_Packages*"))[-4:]
    except OSError:
        return []


def resolve_cached(cache: Path, metapackage: str = DEBIAN_METAPACKAGE) -> tuple[str, str]:
    """:func:`resolve_metapackage`, remembered until the apt lists change (apt-cache is slow)."""
    memo = cache / "kernels" / "resolved.json"
    stamp = _apt_lists_stamp()
    try:
        stored = json.loads(memo.read_text())
        if stored["metapackage"] == metapackage and stored["stamp"] == stamp and stamp:
            return stored["package"], stored["version"]
    except (OSError, ValueError, KeyError):
        pass
    with step("kernel package lookup", f"apt-cache: {metapackage}"):
        package, version = resolve_metapackage(metapackage)
    write_json_atomic(memo, {"metapackage": metapackage, "stamp": stamp, "package": package, "version": version})
    return package, version


def debian_cloud_kernel(cache: Path) -> KernelSpec:
    """Fetch (once) and describe the kernel that Debian's cloud metapackage names."""
    package, version = resolve_cached(cache)
    release = package.removeprefix("linux-image-")
    target = cache / "kernels" / f"{package}_{version}"
    kbuild = Path("/usr/src") / f"linux-headers-{release}"
    held, fetched = None, False
    for _ in range(3):
        held = lease(target)
        if held is not None:
            break
        with file_lock(cache / "locks" / "kernel.lock"):
            if not target.exists():
                _fetch_package(package, version, target, logs_dir(cache) / "apt.log")
                fetched = True
    else:
        raise HostSetupError(f"{target} vanished from the cache three times while this lab fetched it "
                             "(a cnlab cache prune with --keep-last 0 running beside it?)")
    if not fetched:
        cached("kernel", f"{package} {version}")
    if not (kbuild / "Makefile").exists():
        kbuild_found = None
    else:
        kbuild_found = kbuild
    return KernelSpec(
        image=target / "boot" / f"vmlinuz-{release}",
        release=release,
        modules_dir=target / "lib" / "modules" / release,
        kbuild_dir=kbuild_found,
        package_version=version,
        source=f"debian:{package}",
        config=target / "boot" / f"config-{release}",
        leases=(held,),
    )


def _fetch_package(package: str, version: str, target: Path, log_path: Path) -> None:
    """Download the kernel package and unpack it into ``target`` (published whole, or not at all)."""
    require_tool("dpkg-deb", "dpkg")
    depmod = require_tool("depmod", "kmod")
    release = package.removeprefix("linux-image-")
    with publish_dir(target) as scratch:
        with step("kernel download", f"{package}={version}"):
            run_logged(["apt-get", "download", f"{package}={version}"], log_path,
                       f"apt-get download {package}={version}", cwd=scratch)
        debs = list(scratch.glob("*.deb"))
        if len(debs) != 1:
            raise HostSetupError(f"apt-get download {package} gave {len(debs)} files")
        with step("kernel unpack", debs[0].name):
            run_logged(["dpkg-deb", "-x", str(debs[0]), str(scratch)], log_path, f"dpkg-deb -x {debs[0].name}")
            debs[0].unlink()
            run_logged([depmod, "-b", str(scratch), release], log_path, f"depmod {release}")


def release_from_bzimage(image: Path) -> str | None:
    """The release string a bzImage carries (setup header field ``kernel_version``)."""
    with open(image, "rb") as handle:
        head = handle.read(0x10000)
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    pointer = int.from_bytes(head[0x20E:0x210], "little")
    if not pointer:
        return None
    start = pointer + 0x200
    text = head[start:start + 256].split(b"\0", 1)[0].decode(errors="replace")
    return text.split()[0] if text.strip() else None


def _release_from_kbuild(kbuild: Path) -> str | None:
    uts = kbuild / "include/generated/utsrelease.h"
    if uts.exists():
        match = re.search(r'UTS_RELEASE\s+"([^"]+)"', uts.read_text())
        if match:
            return match.group(1)
    return None


def custom_kernel(image: Path, kbuild: Path | None, modules_dir: Path | None = None) -> KernelSpec:
    """A kernel the user brings: a bzImage plus, optionally, its build tree."""
    image = Path(image)
    if not image.is_file():
        raise HostSetupError(f"kernel image not found: {image}")
    release = release_from_bzimage(image)
    if release is None:
        raise HostSetupError(f"{image} is not a bzImage (no setup header)")
    if kbuild is not None:
        kbuild = Path(kbuild)
        if not kbuild.is_dir():
            raise HostSetupError(f"kernel build tree not found: {kbuild}")
        built_for = _release_from_kbuild(kbuild)
        if built_for is not None and built_for != release:
            raise HostSetupError(f"{kbuild} is the build tree of {built_for}, but {image} is {release}")
    if modules_dir is not None and not Path(modules_dir).is_dir():
        raise HostSetupError(f"kernel modules directory not found: {modules_dir}")
    if modules_dir is not None and Path(modules_dir).name != release:
        raise HostSetupError(f"{modules_dir} is not /lib/modules/{release} (the release of {image})")
    return KernelSpec(
        image=image,
        release=release,
        modules_dir=Path(modules_dir) if modules_dir else None,
        kbuild_dir=kbuild,
        source="custom",
        config=kbuild / ".config" if kbuild is not None and (kbuild / ".config").is_file() else None,
    )
