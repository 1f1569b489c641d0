"""The plugin contributions the engine gathers around a guest: boot arguments and guest files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.errors import LabError, PluginError
from lab.guest.files import install_guest_programs, put_files
from lab.plugin.manager import LabPluginManager, call_hook
from lab.plugin.model import GuestFile

__all__ = ["guest_packages", "guest_setup_args", "install_guest_files", "install_lab_files", "kernel_module_dirs",
           "plugin_guest_files"]


def guest_setup_args(pm: LabPluginManager, shape: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(kernel command-line args, extra QEMU args)`` from ``lab_kernel_cmdline_add`` and ``lab_qemu_args_add``."""
    cmdline = tuple(str(a) for r in call_hook(pm, "lab_kernel_cmdline_add", config=pm.config, shape=shape)
                    for a in (r or ()))
    qemu = tuple(str(a) for r in call_hook(pm, "lab_qemu_args_add", config=pm.config, shape=shape) for a in (r or ()))
    return cmdline, qemu


def plugin_guest_files(pm: LabPluginManager) -> list[GuestFile]:
    """Every ``lab_guest_files_add`` file, each destination once; a destination named twice is an error."""
    files = [f for group in call_hook(pm, "lab_guest_files_add", config=pm.config) for f in (group or ())]
    seen: dict[str, GuestFile] = {}
    for f in files:
        if f.dest in seen and seen[f.dest].source != f.source:
            raise LabError(f"two plugins install {f.dest}: {seen[f.dest].source} and {f.source}")
        seen[f.dest] = f
    return list(seen.values())


def install_guest_files(pm: LabPluginManager, guest: Any) -> list[GuestFile]:
    """Copy every ``lab_guest_files_add`` file into ``guest``; a destination named twice is an error."""
    files = plugin_guest_files(pm)
    if files:
        put_files(guest, [(f.source, f.dest, f.mode) for f in files])
    return files


def install_lab_files(pm: LabPluginManager, guest: Any) -> str:
    """The lab's guest programs and every plugin's guest files, in one copy (none when the guest's spec carries
    them, as :func:`lab.engine.run.scenario_guest_spec` makes it); the programs' folder.  No command links:
    scenarios call the programs by path."""
    return install_guest_programs(guest, [(f.source, f.dest, f.mode) for f in plugin_guest_files(pm)],
                                  commands=False)


def kernel_module_dirs(pm: LabPluginManager) -> tuple[Path, ...]:
    """Every folder the plugins' ``lab_kernel_modules_add`` name, in hook call order, each once."""
    folders: dict[Path, None] = {}
    for result in call_hook(pm, "lab_kernel_modules_add", config=pm.config):
        if result is None:
            continue
        if isinstance(result, (str, Path)):
            raise PluginError(f"lab_kernel_modules_add returned {result!r}: return a list of folders")
        for folder in result:
            if not isinstance(folder, (str, Path)):
                raise PluginError(f"lab_kernel_modules_add returned {folder!r}, not a folder path")
            folders.setdefault(Path(folder).resolve(), None)
    return tuple(folders)


def guest_packages(pm: LabPluginManager) -> tuple[str, ...]:
    """The extra Debian packages of the guest: the config's (``[lab] packages``, ``--package``) and every
    ``lab_guest_packages_add`` answer, sorted, each once."""
    from lab.config import PACKAGE_NAME

    names = set(pm.config.packages)
    for result in call_hook(pm, "lab_guest_packages_add", config=pm.config):
        if result is None:
            continue
        if isinstance(result, str):
            raise PluginError(f"lab_guest_packages_add returned {result!r}: return a list of package names")
        for name in result:
            if not isinstance(name, str) or not PACKAGE_NAME.fullmatch(name):
                raise PluginError(f"lab_guest_packages_add returned {name!r}, not a Debian package name")
            names.add(name)
    return tuple(sorted(names))
