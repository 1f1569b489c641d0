"""Extra kernel modules: a developer's own module sources, built against the guest kernel and the lab module.

A folder with a Kbuild/Makefile (from ``cnlab --module DIR`` or a plugin's ``lab_kernel_modules_add``) is
built like the lab module (:func:`lab.image.module.build_module`: a scratch copy in the cache, ``W=1``),
plus:

* ``KBUILD_EXTRA_SYMBOLS`` = the lab module's ``Module.symvers``, so it may call the exported CBUS API
  (``cbus_insert()``, ``cbus_insert_group()``) and modpost resolves the symbols with their CRCs, and
  the ``Module.symvers`` of the folders built before it (a folder may use what an earlier one exports);
* ``KCFLAGS=-I<the lab module's sources>``, so ``#include <cbus.h>`` finds the API's header;
* the cache key holds its sources, the kernel and the lab module's build (the ``Module.symvers`` path is in
  the lab module's cache folder, named by the hash of the lab module's sources and the kernel).

Its compiler warnings are returned (paths pointing at the developer's folder, not the scratch copy); a
failed build is a :class:`~lab.errors.ModuleSourceError` with the compiler's first error line.  The built
modules are put in load order: each after every module it depends on (``depends=`` in its ``.modinfo``,
written by modpost), ``cnlab`` first.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import ModuleSourceError
from lab.host.cache import Lease
from lab.image.kernel import KernelSpec
from lab.image.module import CompileError, ModuleBuild, build_module

__all__ = ["ExtraModule", "build_extra_modules", "first_error", "load_order", "modinfo", "warnings_of"]

LAB_MODULE = "cnlab"
_ERROR = re.compile(r":\d+(?::\d+)?: (?:fatal )?error: |^ERROR: |\*\*\* ")
_WARNING = re.compile(r":\d+(?::\d+)?: warning: |^WARNING: ")


@dataclass(frozen=True)
class ExtraModule:
    """One built extra module.

    :param name: the module's name (``.modinfo`` ``name=``: what ``rmmod`` and ``/sys/module`` use).
    :param path: the ``.ko`` in the cache.
    :param source: the folder it was built from.
    :param depends: the modules it needs loaded first (``.modinfo`` ``depends=``).
    :param warnings: the compiler's and modpost's warnings, one line each.
    :param source_hash: the hash of the folder's sources.
    """

    name: str
    path: Path
    source: Path
    depends: tuple[str, ...]
    warnings: tuple[str, ...]
    source_hash: str
    leases: tuple[Lease, ...] = field(default=(), compare=False, repr=False)


def modinfo(ko: Path) -> dict[str, list[str]]:
    """The ``.modinfo`` section of an ELF64 ``.ko``: key -> values (``depends``, ``name``, ``parm``...)."""
    data = ko.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ModuleSourceError(f"{ko}: not an ELF64 kernel module")
    endian = "<" if data[5] == 1 else ">"
    shoff, = struct.unpack_from(endian + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(endian + "IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", str_off + name)
        if data[str_off + name:end] == b".modinfo":
            out: dict[str, list[str]] = {}
            for entry in data[offset:offset + size].split(b"\0"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    out.setdefault(key, []).append(value)
            return out
    raise ModuleSourceError(f"{ko}: no .modinfo section (not a kernel module)")


def _module_name(ko: Path, info: dict[str, list[str]]) -> str:
    return (info.get("name") or [ko.stem.replace("-", "_")])[0]


def _depends(info: dict[str, list[str]]) -> tuple[str, ...]:
    return tuple(d for value in info.get("depends", ()) for d in value.split(",") if d)


def _own_paths(text: str, folder: Path, source: Path) -> str:
    """Compiler output with the paths of the scratch copy (``FOLDER/.KEY.xxx/src/``) turned into ``source``."""
    scratch = re.compile(re.escape(f"{folder.parent}/.{folder.name}.") + r"[^/\s]+/src/")
    return scratch.sub(f"{source}/", text)


def first_error(output: str) -> str:
    """The first line of a failed build that says what failed (a compiler error, modpost, make)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if _ERROR.search(line):
            return line
    return lines[-1] if lines else "make failed without output"


def warnings_of(build_log: str) -> tuple[str, ...]:
    """The warning lines of a build's output, in order, each once."""
    seen: dict[str, None] = {}
    for line in build_log.splitlines():
        if _WARNING.search(line):
            seen.setdefault(line.strip(), None)
    return tuple(seen)


def load_order(modules: Sequence[ExtraModule]) -> tuple[ExtraModule, ...]:
    """``modules`` ordered so each comes after what it depends on (stable otherwise); cnlab is loaded first.

    A dependency that is neither ``cnlab`` nor one of ``modules`` cannot be loaded at boot, and a cycle
    cannot be loaded at all: both are :class:`~lab.errors.ModuleSourceError`.
    """
    by_name = {m.name: m for m in modules}
    for m in modules:
        missing = [d for d in m.depends if d != LAB_MODULE and d not in by_name]
        if missing:
            raise ModuleSourceError(f"module {m.name} ({m.source}) needs module {', '.join(missing)}, which the "
                                    f"lab does not load (it loads {LAB_MODULE} and the extra modules only)")
    ordered: list[ExtraModule] = []
    placed: set[str] = set()
    pending = list(modules)
    while pending:
        ready = [m for m in pending if all(d == LAB_MODULE or d in placed for d in m.depends)]
        if not ready:
            raise ModuleSourceError("extra modules depend on each other in a cycle: "
                                    + ", ".join(f"{m.name} -> {'/'.join(m.depends)}" for m in pending))
        for m in ready:
            ordered.append(m)
            placed.add(m.name)
            pending.remove(m)
    return tuple(ordered)


def _check_folder(source: Path) -> Path:
    if not source.is_dir():
        raise ModuleSourceError(f"module folder {source}: not a directory")
    if not ((source / "Kbuild").is_file() or (source / "Makefile").is_file()):
        raise ModuleSourceError(f"module folder {source}: no Kbuild or Makefile (a kernel module's sources)")
    return source.resolve()


def build_extra_modules(kernel: KernelSpec, cache: Path, lab_module: ModuleBuild, lab_source: Path,
                        folders: Sequence[Path]) -> tuple[ExtraModule, ...]:
    """Build (or reuse) each folder's modules against ``kernel`` and ``lab_module``; in load order.

    :param lab_source: the lab module's source folder (on the include path: ``#include <cbus.h>``).
    """
    symvers = lab_module.symvers
    if symvers is None:
        raise ModuleSourceError(f"the lab module's build in {lab_module.folder} kept no Module.symvers")
    built: list[ExtraModule] = []
    seen: dict[Path, None] = {}
    for folder in folders:
        seen.setdefault(_check_folder(Path(folder)), None)
    symbols = [symvers]  # each folder may call what the lab module and the folders before it export
    for source in seen:
        make = [f"KBUILD_EXTRA_SYMBOLS={' '.join(map(str, symbols))}", f"KCFLAGS=-I{lab_source.resolve()}"]
        try:
            build = build_module(kernel, cache, source=source, extra_make=make, what=f"module {source.name}",
                                 log_name=f"kmod-build-{source.name}.log")
        except CompileError as exc:
            line = first_error(exc.output).replace(f"{exc.tree}/", f"{source}/")
            raise ModuleSourceError(f"module {source}: build failed: {line} (full output in {exc.log})") from None
        if build.symvers is not None:
            symbols.append(build.symvers)
        warnings = tuple(_own_paths(w, build.folder, source) for w in warnings_of(build.build_log))
        for ko in build.modules:
            info = modinfo(ko)
            built.append(ExtraModule(_module_name(ko, info), ko, source, _depends(info), warnings,
                                     build.source_hash, build.leases))
    names: dict[str, ExtraModule] = {}
    for m in built:
        if m.name == LAB_MODULE:
            raise ModuleSourceError(f"module folder {m.source} builds {LAB_MODULE}.ko, the lab module's name "
                                    "(use --kmod DIR to replace the lab module)")
        if m.name in names:
            raise ModuleSourceError(f"module {m.name} is built by two folders: {names[m.name].source} and {m.source}")
        names[m.name] = m
    return load_order(built)
