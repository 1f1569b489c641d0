"""Decoding the frames of a kernel report to source file and line.

A console report names frames as ``func+0x1a/0x80 [module]`` (and the
faulting one as ``RIP: 0010:func+0x1a/0x80 [module]``).  For every frame of
a module the lab has the unstripped ``.ko`` of (the lab's module is built
with debug info and kept in the cache), the frame is decoded on the host:
the function's section and section-relative address come from the module's
symbol table (pyelftools), the line from binutils ``addr2line -j SECTION``,
which applies the module's relocations to its DWARF.  Kernel frames are
decoded the same way when a ``vmlinux`` with debug info is given (the
kernel's ``-dbg`` package, opt-in: see :func:`find_vmlinux`).

Call-trace frames are return addresses, so their line is looked up one byte
earlier (the call, not the instruction after it); the ``RIP:`` frame is the
faulting instruction itself.  Frames marked ``?`` (stack words the unwinder
was not sure of) are not decoded.  Nothing here changes a report's
fingerprint: that stays kind plus function names, no addresses or offsets.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from lab.host.packages import require_tool
from lab.image.module import SOURCE_PREFIX

__all__ = ["DecodedFrame", "Symbolizer", "find_vmlinux", "symbolize_reports", "VMLINUX_ENV"]

#: A vmlinux with debug info to decode kernel frames with (overrides the search in find_vmlinux).
VMLINUX_ENV = "CNLAB_VMLINUX"

_FRAME = re.compile(r"^(?P<prefix>.*?)(?P<rip>RIP: \d+:)?(?P<func>[A-Za-z_][\w.]*)\+0x(?P<off>[0-9a-f]+)"
                    r"/0x(?P<size>[0-9a-f]+)(?: \[(?P<mod>\w+)[^\]]*\])?")
_TIMESTAMP = re.compile(r"^\s*\[\s*\d+\.\d+\]\s?")


@dataclass(frozen=True)
class DecodedFrame:
    """One frame of a report and where in the source it is.

    :param frame: the frame as printed (``func+0x1a/0x80 [cnlab]``).
    :param module: the module it is in, or ``vmlinux``.
    :param location: ``file:line`` of the frame: in inlined code, the inlined function's line.
    :param source_function: the function that line is in (the frame's own, or one inlined into it).
    :param inlined: when the location is inside inlined code, the call sites it was inlined at, each as
        ``function at file:line``, from the innermost out to the frame's own function.
    """

    frame: str
    function: str
    module: str
    location: str
    source_function: str = ""
    inlined: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """One line: ``frame -> file:line`` (and where it was inlined)."""
        text = f"{self.frame} -> {self.location}"
        if self.inlined:
            text += f" (in {self.source_function}, inlined at " + ", ".join(self.inlined) + ")"
        return text

    def to_dict(self) -> dict:
        return asdict(self) | {"inlined": list(self.inlined), "text": self.describe()}


@dataclass(frozen=True)
class _Frame:
    text: str
    function: str
    offset: int
    module: str  # "" for the kernel
    exact: bool  # the faulting instruction (RIP), not a return address


def _frames(excerpt: str) -> list[_Frame]:
    frames: list[_Frame] = []
    seen: set[tuple[str, int, str]] = set()
    for raw in excerpt.splitlines():
        line = _TIMESTAMP.sub("", raw)
        match = _FRAME.match(line)
        if match is None or line.lstrip().startswith("?"):
            continue
        rip = match.group("rip") is not None
        if not rip and match.group("prefix").strip():
            continue  # a frame name inside some other message, not a trace line
        key = (match.group("func"), int(match.group("off"), 16), match.group("mod") or "")
        if key in seen:
            continue
        seen.add(key)
        text = line[match.start("func"):match.end()].strip()
        frames.append(_Frame(text, key[0], key[1], key[2], rip))
    return frames


@lru_cache(maxsize=16)
def _symbols(path: str, mtime: float) -> dict[str, tuple[str, int]]:
    """``function -> (section name, address)`` of an ELF file's function symbols."""
    from elftools.elf.elffile import ELFFile

    table: dict[str, tuple[str, int]] = {}
    with open(path, "rb") as handle:
        elf = ELFFile(handle)
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            return table
        relocatable = elf["e_type"] == "ET_REL"
        names = {i: s.name for i, s in enumerate(elf.iter_sections())}
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] != "STT_FUNC" or not isinstance(sym["st_shndx"], int):
                continue
            section = names.get(sym["st_shndx"], "") if relocatable else ""
            table.setdefault(sym.name, (section, sym["st_value"]))
    return table


def _has_debug_info(path: Path) -> bool:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as handle:
        return ELFFile(handle).get_section_by_name(".debug_line") is not None


class Symbolizer:
    """Decodes report frames with the debug info of the given modules (and optionally vmlinux).

    :param modules: the ``.ko`` files the guest loaded, with debug info; a module's name is its file name
        (``cnlab.ko`` -> ``cnlab``, dashes as underscores, as the kernel prints it).
    :param vmlinux: the guest kernel's vmlinux with debug info, or None to leave kernel frames alone.
    :param source_roots: ``{build folder prefix: shown prefix}``: a decoded file under a build folder is
        shown relative to it under the shown prefix (a module built in the cache shows as ``kmod/ctl.c``).
    """

    def __init__(self, modules: Iterable[Path], vmlinux: Path | None = None,
                 source_roots: Mapping[str, str] | None = None) -> None:
        self.objects: dict[str, Path] = {}
        for path in modules:
            name = path.name.split(".ko")[0].replace("-", "_")
            if path.exists() and _has_debug_info(path):
                self.objects[name] = path
        if vmlinux is not None and vmlinux.exists():
            self.objects[""] = vmlinux
        self.source_roots = {SOURCE_PREFIX: ""} | dict(source_roots or {})

    def decode(self, excerpt: str) -> list[DecodedFrame]:
        """Every frame of ``excerpt`` this symbolizer has debug info for, decoded, in order."""
        frames = [f for f in _frames(excerpt) if f.module.replace("-", "_") in self.objects]
        wanted: dict[tuple[str, str], list[tuple[_Frame, int]]] = {}
        for frame in frames:
            path = self.objects[frame.module.replace("-", "_")]
            symbol = _symbols(str(path), path.stat().st_mtime).get(frame.function)
            if symbol is None:
                continue
            section, base = symbol
            address = base + frame.offset - (0 if frame.exact or frame.offset == 0 else 1)
            wanted.setdefault((str(path), section), []).append((frame, address))
        decoded: dict[_Frame, DecodedFrame] = {}
        for (path, section), items in wanted.items():
            for (frame, _), chain in zip(items, self._addr2line(path, section, [a for _, a in items]), strict=True):
                if not chain or chain[0][1].startswith("??"):
                    continue
                inlined = tuple(f"{fn} at {loc}" for fn, loc in chain[1:])
                decoded[frame] = DecodedFrame(frame.text, frame.function, frame.module or "vmlinux",
                                              chain[0][1], chain[0][0], inlined)
        return [decoded[f] for f in frames if f in decoded]

    def _addr2line(self, path: str, section: str, addresses: Sequence[int]) -> list[list[tuple[str, str]]]:
        """Per address, the ``(function, file:line)`` chain from the innermost inlined function out."""
        argv = [require_tool("addr2line", "binutils"), "-e", path, "-f", "-i", "-a"]
        if section:
            argv += ["-j", section]
        result = subprocess.run([*argv, *(hex(a) for a in addresses)], capture_output=True, text=True,
                                check=False, timeout=120)
        chains: list[list[tuple[str, str]]] = []
        lines = result.stdout.splitlines()
        i = 0
        while i < len(lines):
            if lines[i].startswith("0x"):  # -a: each address starts its block
                chains.append([])
                i += 1
                continue
            if chains and i + 1 < len(lines):
                chains[-1].append((lines[i], self._shown(lines[i + 1])))
            i += 2
        return chains if len(chains) == len(addresses) else [[] for _ in addresses]

    def _shown(self, location: str) -> str:
        location = location.split(" (discriminator")[0]
        for prefix, shown in self.source_roots.items():
            if location.startswith(prefix.rstrip("/") + "/"):
                rest = location[len(prefix.rstrip("/")) + 1:]
                return f"{shown.rstrip('/')}/{rest}" if shown else rest
        return location


def find_vmlinux(release: str, env: Mapping[str, str] | None = None) -> Path | None:
    """The guest kernel's vmlinux with debug info, if the host has it: ``$CNLAB_VMLINUX``, or where
    Debian's ``linux-image-RELEASE-dbg`` package puts it.  Nothing is installed: the package is large."""
    env = os.environ if env is None else env
    if env.get(VMLINUX_ENV):
        return Path(env[VMLINUX_ENV])
    for candidate in (Path(f"/usr/lib/debug/boot/vmlinux-{release}"),
                      Path(f"/usr/lib/debug/lib/modules/{release}/vmlinux")):
        if candidate.exists():
            return candidate
    return None


def symbolize_reports(reports: Iterable[Mapping], symbolizer: Symbolizer) -> list[dict]:
    """``reports`` (``KernelReport.to_dict()``) each with ``decoded``: its frames' source lines."""
    out = []
    for report in reports:
        frames = symbolizer.decode(report.get("excerpt", "")) if symbolizer.objects else []
        out.append(dict(report) | {"decoded": [f.to_dict() for f in frames]})
    return out
