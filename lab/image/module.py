"""Build the lab's kernel module (``kmod/``) against a guest kernel, cached.

The build runs on a copy of ``kmod/`` inside the cache, in a folder keyed by
a hash of the sources and the kernel, so an unchanged module costs a hash and
a changed one a few seconds; the worktree stays free of build products.

Modules are built with debug info (``-g``; source paths recorded as
``kmod/ctl.c``, not the scratch folder) and kept twice: the unstripped file in
``debug/`` beside the shipped one, which has its debug sections stripped
(``objcopy --strip-debug``, as ``INSTALL_MOD_STRIP=1`` does) so every
per-boot archive stays small.  The host decodes report frames
(:mod:`lab.guest.symbolize`) and reads vmcores with the debug copy.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import BuildError, HostSetupError
from lab.host.cache import Lease, content_key, file_lock, hash_tree, lease, publish_dir
from lab.host.packages import require_tool
from lab.host.quiet import logs_dir
from lab.host.steps import cached, step
from lab.image.kernel import KernelSpec

__all__ = ["CompileError", "ModuleBuild", "build_module", "kmod_dir", "debug_copy", "DEBUG_DIR", "SOURCE_PREFIX"]

SOURCE_PATTERNS = ("*.c", "*.h", "Kbuild", "Makefile")
#: The folder, beside the shipped modules, of their unstripped copies.
DEBUG_DIR = "debug"
#: Where the debug info says the sources are: ``SOURCE_PREFIX/kmod/ctl.c`` (not the scratch folder).
SOURCE_PREFIX = "/cnlab-src"
#: Part of every build's cache key: what a build folder holds and how it is made (the stripped .ko files, their
#: debug copies, build.log, Module.symvers).  Change it when the recipe changes in a way the hashed inputs do not show.
RECIPE = "ko+symvers+debug-info-2"


class CompileError(BuildError):
    """``make`` failed; ``output`` is what it printed, ``tree`` the folder it compiled (a scratch copy)."""

    def __init__(self, message: str, output: str, tree: Path, log: Path) -> None:
        super().__init__(message)
        self.output = output
        self.tree = tree
        self.log = log


def kmod_dir() -> Path:
    """The repository's ``kmod/`` folder."""
    return Path(__file__).resolve().parents[2] / "kmod"


@dataclass(frozen=True)
class ModuleBuild:
    """Built module files and the hash of the sources they came from."""

    modules: tuple[Path, ...]
    source_hash: str
    build_log: str
    #: the build's cache folder (``Module.symvers`` is there, for modules built against this one)
    folder: Path | None = None
    #: a shared lock on the build's cache folder (``cnlab cache prune`` skips it)
    leases: tuple[Lease, ...] = field(default=(), compare=False, repr=False)

    @property
    def symvers(self) -> Path | None:
        """The build's ``Module.symvers`` (the symbols it exports, with their CRCs), if it kept one."""
        path = self.folder / "Module.symvers" if self.folder is not None else None
        return path if path is not None and path.is_file() else None

    def module(self, name: str = "cnlab") -> Path:
        for path in self.modules:
            if path.stem == name:
                return path
        raise BuildError(f"module {name}.ko was not built (have: {', '.join(p.name for p in self.modules)})")

    @property
    def debug_modules(self) -> tuple[Path, ...]:
        """The unstripped copies of :attr:`modules` (with DWARF), in the same order."""
        return tuple(debug_copy(p) for p in self.modules)


def debug_copy(module: Path) -> Path:
    """The unstripped copy of a shipped module (itself if there is none: a module built elsewhere)."""
    candidate = module.parent / DEBUG_DIR / module.name
    return candidate if candidate.exists() else module


def build_module(kernel: KernelSpec, cache: Path, source: Path | None = None,
                 extra_make: list[str] | None = None, what: str = "module",
                 log_name: str = "kmod-build.log") -> ModuleBuild:
    """Build (or reuse) the modules in ``source`` for ``kernel``.

    ``what`` names the build in progress lines; a failed build leaves its output in the logs folder as
    ``log_name`` and raises :class:`CompileError`.
    """
    source = source or kmod_dir()
    if kernel.kbuild_dir is None:
        raise HostSetupError(
            f"no kernel build tree for {kernel.release}: install linux-headers-{kernel.release} "
            "or pass --kbuild DIR"
        )
    source_hash = hash_tree(source, SOURCE_PATTERNS)
    key = content_key(source_hash, kernel.release, str(kernel.kbuild_dir), extra_make or [], RECIPE)
    folder = cache / "kmod" / key
    built = False
    for _ in range(3):
        held = lease(folder)
        if held is not None:
            break
        with file_lock(cache / "locks" / "kmod.lock"):
            if not folder.exists():
                with step(f"{what} build", f"{source.name}/ against {kernel.release}"), \
                        publish_dir(folder) as scratch:
                    _compile(source, scratch, kernel.kbuild_dir, extra_make or [], logs_dir(cache) / log_name)
                built = True
    else:
        raise BuildError(f"module build {key} vanished from the cache three times while this lab built it "
                         "(a cnlab cache prune with --keep-last 0 running beside it?)")
    if not built:
        cached(what, key)
    modules = tuple(sorted(p for p in folder.glob("*.ko")))
    if not modules:
        raise BuildError(f"building {source} produced no .ko files")
    log_path = folder / "build.log"
    return ModuleBuild(modules, source_hash, log_path.read_text() if log_path.exists() else "", folder,
                       (held,))


def _compile(source: Path, scratch: Path, kbuild: Path, extra_make: list[str], failure_log: Path) -> None:
    make = require_tool("make", "make")
    tree = scratch / "src"
    shutil.copytree(source, tree, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*.cmd", "*.mod*", "tests", "tools"))
    # -g even when the kernel's config has no debug info; file names as kmod/ctl.c, not the scratch folder.
    debug_flags = f"KCFLAGS=-g -fdebug-prefix-map={tree}={SOURCE_PREFIX}/{source.name}"
    result = subprocess.run(
        [make, "-C", str(kbuild), f"M={tree}", "W=1", debug_flags, *extra_make, "modules"],
        capture_output=True,
        text=True,
        check=False,
    )
    (scratch / "build.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        failure_log.parent.mkdir(parents=True, exist_ok=True)
        failure_log.write_text(result.stdout + result.stderr)  # the scratch folder goes with the failure
        errors = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()[-5:]
        raise CompileError("module build failed: " + " | ".join(errors[:5]) + f"; full output in {failure_log}",
                           result.stdout + result.stderr, tree, failure_log)
    objcopy = require_tool("objcopy", "binutils")
    (scratch / DEBUG_DIR).mkdir()
    for built in tree.glob("*.ko"):
        shutil.copy2(built, scratch / DEBUG_DIR / built.name)
        subprocess.run([objcopy, "--strip-debug", str(built), str(scratch / built.name)], check=True,
                       capture_output=True)
    if (tree / "Module.symvers").is_file():
        shutil.copy2(tree / "Module.symvers", scratch / "Module.symvers")
    shutil.rmtree(tree)
