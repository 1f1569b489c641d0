"""Guest image build: root disk, module disk and base initramfs, all cached.

Three artefacts, each in a cache folder named by a hash of its inputs:

* the root disk (``rootfs.ext4``): Debian from mmdebstrap, with our sshd
  config and the host's pyroute2, plus any extra packages the lab config,
  ``--package`` or a plugin names (:mod:`lab.image.guest_packages`: each
  list its own root disk); independent of the kernel;
* the module disk (``modules.ext4``): the guest kernel's ``/lib/modules``;
* the base initramfs (``base.cpio``): cnlab-init, the native consumer
  ``cnlab-consume`` and the virtio modules.

Per-boot material (keys, the lab's kernel module) is appended to the base
initramfs at boot (:mod:`lab.bootfiles`), so neither a new key nor a module
change rebuilds anything here.  Deciding that nothing needs a rebuild costs a
few hashes and ``stat`` calls.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lab.config import check_package_names
from lab.errors import BuildError
from lab.host.cache import Lease, content_key, file_lock, hash_tree, lease, publish_dir, write_json_atomic
from lab.host.packages import require_tool
from lab.host.quiet import logs_dir, run_logged
from lab.host.steps import cached, step
from lab.image.cpio import CpioEntry, write_newc
from lab.image.guest_packages import UnknownPackage, unknown_in_log, unknown_on_host
from lab.image.kernel import KernelSpec
from lab.image.keys import LabKeys, ensure_keys
from lab.image.pvh import PVH_TOOLS, PvhUnavailable, write_pvh_kernel

__all__ = ["GuestImage", "build_image", "images_dir", "SUITE"]

log = logging.getLogger(__name__)

#: Bump when the build recipe changes in a way the hashed inputs do not show.
RECIPE_VERSION = 3
SUITE = "bookworm"
GUEST_SITE_PACKAGES = "/usr/lib/python3/dist-packages"
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")


def images_dir() -> Path:
    """The repository's ``images/`` folder (recipes, init source, rootfs overlay)."""
    return Path(__file__).resolve().parents[2] / "images"


def _listed(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


@dataclass(frozen=True)
class GuestImage:
    """Everything needed to boot a guest of one kernel."""

    kernel: KernelSpec
    rootfs: Path
    modules_disk: Path | None
    initramfs: Path
    keys: LabKeys
    manifest_path: Path
    pvh_kernel: Path | None = None  # the kernel as a PVH ELF (lab.image.pvh), if it could be made
    #: shared locks on the cache folders above, held as long as this object lives (``cnlab cache prune``)
    leases: tuple[Lease, ...] = field(default=(), compare=False, repr=False)

    @property
    def boot_kernel(self) -> Path:
        """What QEMU's ``-kernel`` gets: the PVH ELF when there is one, else the bzImage."""
        return self.pvh_kernel or self.kernel.image

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())


def _run(argv: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise BuildError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result


def _mkfs_ext4(source: Path, image: Path, size_bytes: int, label: str) -> None:
    mkfs = require_tool("mkfs.ext4", "e2fsprogs")
    size_mb = max(64, size_bytes * 5 // 4 // 2**20 + 96)
    _run(
        [mkfs, "-q", "-F", "-O", "^has_journal", "-L", label, "-d", str(source), str(image), f"{size_mb}M"],
        f"mkfs.ext4 -d {source}",
    )


def _pyroute2_source() -> tuple[Path, str]:
    """The host's pyroute2 package folder and version (the guest gets the same)."""
    spec = importlib.util.find_spec("pyroute2")  # found, not imported: importing costs 0.5 s
    if spec is None or spec.origin is None:
        raise BuildError("pyroute2 is not installed on the host")
    return Path(spec.origin).resolve().parent, importlib.metadata.version("pyroute2")


# --------------------------------------------------------------------- rootfs
def _rootfs_inputs(extra_packages: tuple[str, ...] = ()) -> dict:
    """What the root disk's key hashes.  ``extra_packages`` (checked names) appear only when there are some,
    sorted: without them the key is the one root disks had before extra packages existed."""
    root = images_dir()
    _, pyroute2_version = _pyroute2_source()
    inputs = {
        "recipe": RECIPE_VERSION,
        "suite": SUITE,
        "packages": _listed(root / "packages.txt"),
        "overlay": hash_tree(root / "rootfs"),
        "pyroute2": pyroute2_version,
        "dpkg_excludes": DPKG_EXCLUDES,
    }
    extra = check_package_names(extra_packages, "guest packages")
    if extra:
        inputs["extra_packages"] = list(extra)
    return inputs


def _check_known(inputs: dict) -> None:
    """Stop with :class:`UnknownPackage` before mmdebstrap if the host's apt knows an extra package is not there."""
    unknown = unknown_on_host(inputs.get("extra_packages", ()), inputs["suite"])
    if unknown:
        raise UnknownPackage(unknown, inputs["suite"], "the host's apt-cache policy has no candidate")


def _build_rootfs(folder: Path, inputs: dict, log_path: Path) -> None:
    mmdebstrap = require_tool("mmdebstrap", "mmdebstrap")
    if os.geteuid() != 0:
        # Debian 12's mkfs.ext4 -d takes only a directory, and only root can
        # create one with the right owners.
        raise BuildError("building the guest root filesystem needs root (sudo cnlab image build)")
    tree = folder / "tree"
    pyroute2_dir, _ = _pyroute2_source()
    stage = folder / "stage"
    shutil.copytree(pyroute2_dir, stage / "pyroute2", ignore=shutil.ignore_patterns("__pycache__"))
    overlay = images_dir() / "rootfs" / "etc" / "cnlab"
    argv = [
        mmdebstrap,  # not --quiet: apt's "Unable to locate package NAME" must reach the log
        "--mode=root",
        "--variant=apt",
        "--include=" + ",".join([*inputs["packages"], *inputs.get("extra_packages", ())]),
        *[f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES],
        "--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*",
        "--customize-hook=mkdir -p \"$1\"/lib/modules \"$1\"" + GUEST_SITE_PACKAGES,
        f"--customize-hook=copy-in {overlay} /etc",
        f"--customize-hook=copy-in {stage / 'pyroute2'} {GUEST_SITE_PACKAGES}",
        "--customize-hook=chroot \"$1\" dpkg-query -W -f='${Package}\\t${Version}\\n' > \"$1\"/etc/cnlab/dpkg.tsv",
        f"--customize-hook=download /etc/cnlab/dpkg.tsv {folder / 'dpkg.tsv'}",
        inputs["suite"],
        str(tree),
    ]
    start = log_path.stat().st_size if log_path.exists() else 0
    try:
        run_logged(argv, log_path, "mmdebstrap (the guest root filesystem)", error=BuildError, tail_lines=5)
    except BuildError:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            log.seek(start)
            unknown = unknown_in_log(log.read())
        if unknown:
            raise UnknownPackage(unknown, inputs["suite"], "mmdebstrap: Unable to locate package") from None
        raise
    size = sum(p.lstat().st_size for p in tree.rglob("*"))
    _mkfs_ext4(tree, folder / "rootfs.ext4", size, "cnlab-root")
    shutil.rmtree(tree)
    shutil.rmtree(stage)


# ------------------------------------------------------------- module disk
def _modules_disk_inputs(kernel: KernelSpec) -> dict | None:
    if kernel.modules_dir is None:
        return None
    stamp = kernel.modules_dir / "modules.dep"
    return {
        "recipe": RECIPE_VERSION,
        "release": kernel.release,
        "source": kernel.source,
        "version": kernel.package_version,
        "dir": str(kernel.modules_dir),
        "mtime": stamp.stat().st_mtime_ns if stamp.exists() else 0,
    }


def _build_modules_disk(folder: Path, kernel: KernelSpec) -> None:
    assert kernel.modules_dir is not None
    tree = kernel.modules_dir.parent  # holds <release>/, mounted at /lib/modules
    size = sum(p.stat().st_size for p in kernel.modules_dir.rglob("*") if p.is_file())
    _mkfs_ext4(tree, folder / "modules.ext4", size, "cnlab-modules")


# ---------------------------------------------------------------- initramfs
def _module_closure(kernel: KernelSpec, wanted: list[str]) -> list[Path]:
    """The .ko files for ``wanted`` and their dependencies, dependencies first."""
    if kernel.modules_dir is None:
        return []
    dep_file = kernel.modules_dir / "modules.dep"
    if not dep_file.exists():
        raise BuildError(f"{dep_file} missing: run depmod for {kernel.release}")
    deps: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for line in dep_file.read_text().splitlines():
        path, _, rest = line.partition(":")
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        paths[name] = path
        deps[name] = [Path(d).name.split(".ko")[0].replace("-", "_") for d in rest.split()]
    builtin_file = kernel.modules_dir / "modules.builtin"
    builtin = {
        Path(line).name.split(".ko")[0].replace("-", "_")
        for line in (builtin_file.read_text().splitlines() if builtin_file.exists() else [])
    }
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order or name in builtin:
            return
        if name not in deps:
            raise BuildError(f"kernel {kernel.release} has no module {name} and does not build it in")
        for dep in deps[name]:
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(name)
    return [kernel.modules_dir / paths[name] for name in order]


def _compile_init(out: Path, program: str = "cnlab-init", optimise: str = "-Os") -> None:
    """Compile ``images/init/PROGRAM.c`` into a static binary (the init, the native consumer)."""
    gcc = require_tool("gcc", "gcc")
    source = images_dir() / "init" / f"{program}.c"
    _run([gcc, "-static", optimise, "-Wall", "-Wextra", "-Werror", "-s", "-o", str(out), str(source)],
         f"compiling {program}")


def _initramfs_inputs(kernel: KernelSpec) -> dict:
    return {
        "recipe": RECIPE_VERSION,
        "init": hash_tree(images_dir() / "init"),
        "modules": _listed(images_dir() / "initramfs-modules.txt"),
        "kernel": _modules_disk_inputs(kernel) or kernel.describe(),
    }


def _build_initramfs(folder: Path, kernel: KernelSpec, inputs: dict) -> None:
    _compile_init(folder / "init")
    # The native consumer (plugin "checker-native") and the fork server's client (lab/guestside/forkserver.py);
    # the init copies cnlab-bin/ to /run/cnlab/bin.
    _compile_init(folder / "cnlab-consume", "cnlab-consume", "-O2")
    _compile_init(folder / "cnlab-fork", "cnlab-fork")
    modules = _module_closure(kernel, inputs["modules"])
    folders = ("dev", "proc", "sys", "etc", "etc/cnlab", "lib", "lib/modules", "newroot", "cnlab-bin")
    entries = [CpioEntry(d, None, 0o755) for d in folders]
    entries.append(CpioEntry("init", (folder / "init").read_bytes(), 0o755))
    for program in ("cnlab-consume", "cnlab-fork"):
        entries.append(CpioEntry(f"cnlab-bin/{program}", (folder / program).read_bytes(), 0o755))
    for module in modules:
        entries.append(CpioEntry(f"lib/modules/{module.name}", module.read_bytes()))
    listing = "".join(f"/lib/modules/{m.name}\n" for m in modules).encode()
    entries.append(CpioEntry("etc/cnlab/modules", listing))
    (folder / "base.cpio").write_bytes(write_newc(entries))
    (folder / "init").unlink()
    (folder / "cnlab-consume").unlink()
    (folder / "cnlab-fork").unlink()


def _pvh_inputs(kernel: KernelSpec) -> dict:
    stat = kernel.image.stat()
    # The tools are part of the key: a result cached while lz4 was missing is not reused once it is there.
    tools = {tool: shutil.which(tool) is not None for tool in PVH_TOOLS}
    return {"recipe": 1, "kernel": kernel.describe(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "tools": tools}


def _build_pvh(folder: Path, kernel: KernelSpec) -> None:
    """The kernel as a PVH ELF, or a note saying why not (so the reason is cached too)."""
    try:
        write_pvh_kernel(kernel.image, folder / "vmlinux")
    except PvhUnavailable as exc:
        (folder / "unavailable").write_text(f"{exc}\n")


# ------------------------------------------------------------------- driver
#: What each kind is called in progress lines.
LABELS = {"rootfs": "root disk", "moddisk": "module disk", "initramfs": "initramfs", "pvh": "PVH kernel"}


def _cached(cache: Path, kind: str, inputs: dict, build, force: bool,
            detail: str = "") -> tuple[Path, str, bool, Lease]:
    """The folder of ``kind`` for ``inputs`` (built under the kind's lock if missing), leased.

    Returns the folder, its key, whether it was built now, and the lease.
    """
    key = content_key(inputs)
    folder = cache / kind / key
    label = LABELS.get(kind, kind)
    built = False
    for _ in range(3):
        held = None if force else lease(folder)
        if held is not None:
            if not built:
                cached(label, key)
            return folder, key, built, held
        with file_lock(cache / "locks" / f"{kind}.lock"):
            if force or not folder.exists():
                with step(label, detail or key), publish_dir(folder) as scratch:
                    build(scratch)
                    write_json_atomic(scratch / "inputs.json", inputs)
                built, force = True, False
    raise BuildError(f"{label} {key} vanished from the cache three times while this lab built it "
                     "(a cnlab cache prune with --keep-last 0 running beside it?)")


def build_image(kernel: KernelSpec, cache: Path, force: bool = False,
                packages: tuple[str, ...] = ()) -> GuestImage:
    """Build whatever is missing for ``kernel`` and return the image set (its cache folders leased).

    :param packages: extra Debian packages for the root disk (its own cached variant per list).
    :raises UnknownPackage: an extra package the guest's suite does not have (exit status 2), before
        mmdebstrap runs when the host's apt can tell.
    """
    if not kernel.image.is_file():
        raise BuildError(f"kernel image not found: {kernel.image}")
    keys = ensure_keys(cache / "keys")
    rootfs_inputs = _rootfs_inputs(packages)
    rootfs_log = logs_dir(cache) / "mmdebstrap.log"
    extra = rootfs_inputs.get("extra_packages", [])
    if extra and (force or not (cache / "rootfs" / content_key(rootfs_inputs)).exists()):
        _check_known(rootfs_inputs)
    rootfs, rootfs_key, rootfs_built, rootfs_lease = _cached(
        cache, "rootfs", rootfs_inputs, lambda d: _build_rootfs(d, rootfs_inputs, rootfs_log), force,
        f"mmdebstrap {SUITE}, {len(rootfs_inputs['packages'])} packages"
        + (f" + {', '.join(extra)}" if extra else ""),
    )
    leases = [rootfs_lease]
    mod_inputs = _modules_disk_inputs(kernel)
    modules_disk = None
    mod_key = None
    if mod_inputs is not None:
        mod_folder, mod_key, _, mod_lease = _cached(cache, "moddisk", mod_inputs,
                                                    lambda d: _build_modules_disk(d, kernel), force,
                                                    f"/lib/modules/{kernel.release}")
        modules_disk = mod_folder / "modules.ext4"
        leases.append(mod_lease)
    ird_inputs = _initramfs_inputs(kernel)
    ird, ird_key, _, ird_lease = _cached(cache, "initramfs", ird_inputs,
                                         lambda d: _build_initramfs(d, kernel, ird_inputs), force,
                                         f"cnlab-init and {len(ird_inputs['modules'])} modules")
    leases.append(ird_lease)
    if kernel.pvh:
        pvh, _, _, pvh_lease = _cached(cache, "pvh", _pvh_inputs(kernel), lambda d: _build_pvh(d, kernel), force,
                                       f"decompressing {kernel.image.name}")
        leases.append(pvh_lease)
        pvh_kernel = pvh / "vmlinux" if (pvh / "vmlinux").is_file() else None
        boot = "pvh" if pvh_kernel else "bzImage: " + (pvh / "unavailable").read_text().strip()
    else:
        pvh_kernel, boot = None, "bzImage: this kernel does not boot through its PVH entry"
    if pvh_kernel is None:
        log.info("booting the %s", boot)
    manifest = {
        "kernel": kernel.describe(),
        "rootfs": {"key": rootfs_key, "inputs": rootfs_inputs, "packages": _read_packages(rootfs / "dpkg.tsv")},
        "modules_disk": mod_key,
        "initramfs": {"key": ird_key, "inputs": ird_inputs},
        "boot": boot,
    }
    manifest_path = cache / "manifests" / f"{content_key(manifest)}.json"
    if not manifest_path.exists():
        write_json_atomic(manifest_path, manifest)
    if rootfs_built:
        log.info("root filesystem %s ready", rootfs_key)
    return GuestImage(
        kernel=kernel,
        rootfs=rootfs / "rootfs.ext4",
        modules_disk=modules_disk,
        initramfs=ird / "base.cpio",
        keys=keys,
        manifest_path=manifest_path,
        pvh_kernel=pvh_kernel,
        leases=tuple(leases),
    )


def _read_packages(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = (line.split("\t") for line in path.read_text().splitlines() if "\t" in line)
    return {name: version for name, version in rows}
