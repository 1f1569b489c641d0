"""The debug kernel flavours: Debian's 6.1 source rebuilt with the kernel's bug detectors.

``debug``: lockdep, KASAN, kmemleak, debug objects and fault injection.
``kcsan``: KCSAN, the data-race detector (it cannot be built with KASAN), with
the same fault injection.

Each is built once from the ``linux-source-6.1`` package, configured as Debian's
cloud kernel (``make localmodconfig`` keeps only the loadable modules the lab
uses, ``images/debug-kernel/modules.lsmod``) plus the flavour's fragment
(``images/debug-kernel/debug.config`` or ``kcsan.config``), and cached like
every artefact, by a hash of its inputs: the source package's version, the base
configuration, the fragment and the module list, the compiler and :data:`RECIPE`.
The result is a :class:`~lab.image.kernel.KernelSpec` like the cloud kernel's:
a bzImage, its ``/lib/modules`` tree and a build tree to compile the lab's
module against (object files removed, headers, scripts and ``Module.symvers``
kept).

A cold build takes tens of minutes on two cores: it belongs to nightly runs
(``cnlab --kernel-flavour debug ...``, ``--kernel-flavour kcsan``), never to CI, which uses the cached one
if it is there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from lab.errors import BuildError
from lab.host.cache import content_key, file_lock, lease, publish_dir, write_json_atomic
from lab.host.packages import ensure_packages
from lab.host.quiet import logs_dir, run_logged
from lab.host.steps import cached, step
from lab.image.build import images_dir
from lab.image.kernel import KernelSpec

__all__ = ["DEBUG_PACKAGES", "FLAVOUR_FRAGMENTS", "debug_kernel", "debug_kernel_cached", "debug_inputs",
           "fragment_of", "apply_fragment", "unmet_options"]

#: Bump when the build recipe changes in a way the hashed inputs do not show.
RECIPE = 1
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")

#: Debian packages a kernel build needs beyond REQUIRED_PACKAGES, with why.
DEBUG_PACKAGES: dict[str, str] = {
    SOURCE_PACKAGE: "the kernel source of the debug flavour, with Debian's patches",
    "bc": "kernel build (timeconst)",
    "bison": "kernel build (kconfig, dtc)",
    "flex": "kernel build (kconfig, dtc)",
    "libelf-dev": "kernel build (objtool)",
    "libssl-dev": "kernel build (module signing, certificates)",
    "xz-utils": "unpacks the source tarball",
}

#: Each built flavour's configuration fragment in :func:`recipe_dir`, and what its build step says it adds.
FLAVOUR_FRAGMENTS: dict[str, tuple[str, str]] = {
    "debug": ("debug.config", "lockdep KASAN kmemleak"),
    "kcsan": ("kcsan.config", "KCSAN"),
}

_OPTION = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def recipe_dir() -> Path:
    """``images/debug-kernel``: the configuration fragment and the module list."""
    return images_dir() / "debug-kernel"


def parse_config(text: str) -> dict[str, str]:
    """A kconfig file as ``{option: value}``; ``n`` for ``# CONFIG_X is not set``."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if match := _OPTION.match(line):
            options[match.group(1)] = match.group(2)
        elif match := _UNSET.match(line):
            options[match.group(1)] = "n"
    return options


def apply_fragment(base: str, fragment: str) -> str:
    """``base`` with every option of ``fragment`` set as the fragment says (kconfig's last assignment wins,
    but removing the old one keeps the file free of override warnings)."""
    wanted = parse_config(fragment)
    kept = [line for line in base.splitlines()
            if not ((m := _OPTION.match(line.strip()) or _UNSET.match(line.strip())) and m.group(1) in wanted)]
    added = [f"# {name} is not set" if value == "n" else f"{name}={value}" for name, value in wanted.items()]
    return "\n".join(kept + added) + "\n"


def unmet_options(config: str, fragment: str) -> list[str]:
    """The fragment's options that ``config`` (after olddefconfig) does not hold as asked."""
    have = parse_config(config)
    return [f"{name}={value} (got {have.get(name, 'n')})"
            for name, value in parse_config(fragment).items() if have.get(name, "n") != value]


def _lsmod_names() -> list[str]:
    lines = (line.split("#", 1)[0].split() for line in (recipe_dir() / "modules.lsmod").read_text().splitlines())
    return [words[0] for words in lines if words and words[0] != "Module"]


def _source_version() -> str:
    """The installed linux-source-6.1's Debian version ("" if it is not installed)."""
    if shutil.which("dpkg-query") is None:
        return ""
    probe = subprocess.run(["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE],
                           capture_output=True, text=True, check=False)
    return probe.stdout.strip() if probe.returncode == 0 else ""


def _compiler() -> str:
    if shutil.which("gcc") is None:
        raise BuildError("gcc not found; install the Debian package gcc")
    probe = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=False)
    return probe.stdout.splitlines()[0] if probe.stdout else f"gcc --version: exit {probe.returncode}"


def base_config(base: KernelSpec) -> Path:
    """The configuration Debian built ``base`` (the cloud kernel) with, from its unpacked package."""
    assert base.modules_dir is not None
    config = base.modules_dir.parents[2] / "boot" / f"config-{base.release}"
    if not config.is_file():
        raise BuildError(f"no kernel configuration beside {base.image}: {config} is missing")
    return config


def fragment_of(flavour: str) -> Path:
    """The configuration fragment of a built ``flavour``."""
    if flavour not in FLAVOUR_FRAGMENTS:
        raise BuildError(f"no kernel flavour {flavour!r}: built flavours are {', '.join(FLAVOUR_FRAGMENTS)}")
    return recipe_dir() / FLAVOUR_FRAGMENTS[flavour][0]


def debug_inputs(base: KernelSpec, flavour: str = "debug") -> dict:
    """What a debug flavour's cache key hashes (the fragment tells the flavours apart)."""
    return {
        "recipe": RECIPE,
        "source": {"package": SOURCE_PACKAGE, "version": _source_version()},
        "base_config": content_key(base_config(base).read_text()),
        "fragment": content_key(fragment_of(flavour).read_text()),
        "modules": _lsmod_names(),
        "compiler": _compiler(),
    }


def debug_kernel_cached(cache: Path, base: KernelSpec, flavour: str = "debug") -> bool:
    """Whether ``flavour`` of ``base`` is in the cache already (nothing is built or installed)."""
    return (cache / "debug-kernels" / content_key(debug_inputs(base, flavour))).is_dir()


def debug_kernel(cache: Path, base: KernelSpec, jobs: int | None = None, flavour: str = "debug") -> KernelSpec:
    """``flavour`` (a key of :data:`FLAVOUR_FRAGMENTS`) of ``base``'s configuration, built and cached if
    missing, as a KernelSpec."""
    ensure_packages(DEBUG_PACKAGES, log_dir=logs_dir(cache))
    inputs = debug_inputs(base, flavour)
    key = content_key(inputs)
    target = cache / "debug-kernels" / key
    built = False
    for _ in range(3):
        held = lease(target)
        if held is not None:
            if not built:
                cached(f"{flavour} kernel", key)
            return _spec(target, inputs, held, flavour)
        with file_lock(cache / "locks" / f"{flavour}-kernel.lock"):
            if not target.exists():
                with step(f"{flavour} kernel", f"{SOURCE_PACKAGE} {inputs['source']['version']}, "
                                               f"{FLAVOUR_FRAGMENTS[flavour][1]} (tens of minutes cold)"), \
                        publish_dir(target) as scratch:
                    _build(scratch, base, jobs or os.cpu_count() or 1, logs_dir(cache) / f"{flavour}-kernel.log",
                           flavour)
                    write_json_atomic(scratch / "inputs.json", inputs)
                built = True
    raise BuildError(f"{flavour} kernel {key} vanished from the cache three times while this lab built it")


def _spec(target: Path, inputs: dict, held, flavour: str) -> KernelSpec:
    release = (target / "release").read_text().strip()
    return KernelSpec(
        image=target / "bzImage",
        release=release,
        modules_dir=target / "root" / "lib" / "modules" / release,
        kbuild_dir=target / "build",
        package_version=inputs["source"]["version"],
        source=f"{flavour}:{SOURCE_PACKAGE}",
        config=target / "build" / ".config",
        # Through its PVH entry the debug flavour's KASAN kernel resets the guest before its first console line
        # (QEMU exits with status 0, nothing printed); the bzImage boots, and every flavour boots its bzImage.
        pvh=False,
        leases=(held,),
    )


def _make(build: Path, src: Path, log: Path, *targets: str, jobs: int = 1, env: dict | None = None) -> None:
    run_logged(["make", "-C", str(src), f"O={build}", f"-j{jobs}", *targets], log,
               f"make {' '.join(targets)} ({log.stem})", error=BuildError, tail_lines=8,
               env=env)


def _build(scratch: Path, base: KernelSpec, jobs: int, log: Path, flavour: str) -> None:
    if not SOURCE_TARBALL.is_file():
        raise BuildError(f"{SOURCE_TARBALL} missing: install the Debian package {SOURCE_PACKAGE}")
    with step(f"{flavour} kernel: unpack", SOURCE_TARBALL.name):
        run_logged(["tar", "-xf", str(SOURCE_TARBALL), "-C", str(scratch)], log, f"tar -xf {SOURCE_TARBALL}",
                   error=BuildError)  # tar with xz: a third of tarfile's time
    src = scratch / "src"
    if not (scratch / SOURCE_PACKAGE / "Makefile").is_file():
        raise BuildError(f"{SOURCE_TARBALL} did not unpack into {SOURCE_PACKAGE}/: not the Debian source layout")
    (scratch / SOURCE_PACKAGE).rename(src)
    build = scratch / "build"
    build.mkdir()
    fragment_file = fragment_of(flavour)
    fragment = fragment_file.read_text()
    with step(f"{flavour} kernel: configure",
              f"cloud configuration, localmodconfig, {fragment_file.name}, olddefconfig"):
        (build / ".config").write_text(base_config(base).read_text())
        lsmod = build / "lab.lsmod"
        lsmod.write_text("Module Size Used by\n" + "".join(f"{name} 0 0\n" for name in _lsmod_names()))
        with open(build / ".config.streamlined", "w") as out, open(log, "a") as err:
            status = subprocess.run(["perl", str(src / "scripts/kconfig/streamline_config.pl"), "--localmodconfig",
                                     str(src), "Kconfig"], cwd=build, stdout=out, stderr=err, check=False,
                                    env=dict(os.environ, LSMOD=str(lsmod), srctree=str(src), ARCH="x86",
                                             SRCARCH="x86")).returncode
        if status != 0:
            raise BuildError(f"localmodconfig failed (exit {status}); full output in {log}")
        streamlined = (build / ".config.streamlined").read_text()
        (build / ".config").write_text(apply_fragment(streamlined, fragment))
        _make(build, src, log, "olddefconfig")
        unmet = unmet_options((build / ".config").read_text(), fragment)
        if unmet:
            raise BuildError(f"Kconfig refused {len(unmet)} option(s) of {fragment_file.name}: {', '.join(unmet[:4])}")
    with step(f"{flavour} kernel: compile", f"bzImage and {len(_lsmod_names())} modules, -j{jobs}"):
        _make(build, src, log, "bzImage", "modules", jobs=jobs)
    release = (build / "include/config/kernel.release").read_text().strip()
    with step(f"{flavour} kernel: install", release):
        _make(build, src, log, f"INSTALL_MOD_PATH={scratch / 'root'}", "INSTALL_MOD_STRIP=1", "modules_install",
              jobs=jobs)
        for link in ("build", "source"):
            (scratch / "root/lib/modules" / release / link).unlink(missing_ok=True)
        shutil.copy2(build / "arch/x86/boot/bzImage", scratch / "bzImage")
        shutil.copy2(build / ".config", scratch / "config")
        (scratch / "release").write_text(release + "\n")
        _slim_build_tree(build)
        _relocatable(build)


def _relocatable(build: Path) -> None:
    """Point the build tree at ``../src`` by relative paths: it is built in a scratch folder that is then renamed
    into the cache, and kbuild's generated ``Makefile`` and ``source`` link name the source tree absolutely."""
    (build / "Makefile").write_text("# cnlab: the source tree beside this build tree (lab/image/debug_kernel.py)\n"
                                    "include $(dir $(lastword $(MAKEFILE_LIST)))../src/Makefile\n")
    (build / "source").unlink(missing_ok=True)
    (build / "source").symlink_to("../src")


def _slim_build_tree(build: Path) -> None:
    """Drop what an out-of-tree module build does not read (object files, vmlinux.o); keep ``vmlinux`` and
    ``System.map`` for symbolising reports, and the tools kbuild runs (scripts/, tools/objtool)."""
    keep = (build / "scripts", build / "tools")
    for path in build.rglob("*"):
        if path.suffix in (".o", ".a") and path.is_file() and not any(k in path.parents for k in keep):
            path.unlink()
    (build / "vmlinux.o").unlink(missing_ok=True)
    for stage in build.glob(".tmp_vmlinux*"):  # kallsyms' intermediate links: two more vmlinux-sized files
        stage.unlink()
