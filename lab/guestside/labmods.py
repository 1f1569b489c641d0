#!/usr/bin/env python3
"""Unload the lab's modules, or load them again, in the order the guest's init loaded them.

The init loads the modules named on the kernel command line (``cnlab.load=/run/cnlab/cnlab.ko,...``):
``cnlab.ko`` first, then the extra modules (``cnlab --module DIR``, a plugin's
``lab_kernel_modules_add``), each after the modules it depends on.  The ``module-reload`` fault runs::

    python3 -S /run/cnlab/py/labmods.py unload     # the extra modules in reverse order, then cnlab
    python3 -S /run/cnlab/py/labmods.py load       # cnlab, then the extra modules in order

An extra module is loaded again with the values its writable parameters had when it was unloaded
(``/sys/module/NAME/parameters/*`` with the owner's read and write bits, saved in
``/run/cnlab/reload-params.json``): a module started by writing a parameter keeps running after the
reload.  ``cnlab`` itself is loaded with no parameters, as at boot.  A module that is already gone is
skipped by ``unload``, one that is loaded already by ``load``.  Any failure: one line on stderr, exit 1.
Standard library only; no program is started (the syscalls are made directly).
"""

import ctypes
import json
import os
import stat
import sys

CMDLINE = "/proc/cmdline"
SAVED = "/run/cnlab/reload-params.json"
SYS_FINIT_MODULE = 313  # x86_64
SYS_DELETE_MODULE = 176
O_NONBLOCK = 0o4000


def load_list(cmdline):
    """The module paths of ``cnlab.load=`` on a kernel command line, in load order."""
    for word in cmdline.split():
        if word.startswith("cnlab.load="):
            return [p for p in word[len("cnlab.load="):].split(",") if p]
    return []


def module_name(path):
    """A .ko file's module name (kbuild names a module after its file, '-' read as '_')."""
    return os.path.basename(path)[:-len(".ko")].replace("-", "_") if path.endswith(".ko") else path


def saved_params(sysfs="/sys/module", name=""):
    """``name=value`` of every parameter of a loaded module that root may both read and write."""
    folder = f"{sysfs}/{name}/parameters"
    out = []
    try:
        entries = sorted(os.listdir(folder))
    except FileNotFoundError:
        return ""
    for param in entries:
        mode = os.stat(f"{folder}/{param}").st_mode
        if not (mode & stat.S_IRUSR and mode & stat.S_IWUSR):
            continue
        try:
            with open(f"{folder}/{param}") as f:
                value = f.read().strip()
        except OSError:
            continue
        out.append(f'{param}="{value}"' if any(c.isspace() for c in value) else f"{param}={value}")
    return " ".join(out)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def delete_module(name):
    """rmmod without a process; "" or the error text."""
    if _libc().syscall(SYS_DELETE_MODULE, name.encode(), O_NONBLOCK) != 0:
        return os.strerror(ctypes.get_errno())
    return ""


def finit_module(path, params):
    """insmod without a process; "" or the error text."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return exc.strerror
    try:
        if _libc().syscall(SYS_FINIT_MODULE, fd, params.encode(), 0) != 0:
            return os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    return ""


def unload(paths, sysfs="/sys/module", saved=SAVED):
    """Unload the modules in reverse load order, saving the extra modules' writable parameters."""
    params = {}
    for i, path in reversed(list(enumerate(paths))):
        name = module_name(path)
        if not os.path.isdir(f"{sysfs}/{name}"):
            continue
        if i > 0:
            params[name] = saved_params(sysfs, name)
        err = delete_module(name)
        if err:
            return f"rmmod {name}: {err}"
    with open(saved + ".tmp", "w") as f:
        json.dump(params, f)
    os.rename(saved + ".tmp", saved)
    return ""


def load(paths, sysfs="/sys/module", saved=SAVED):
    """Load the modules in load order; the extra ones with the parameters saved at unload."""
    try:
        with open(saved) as f:
            params = json.load(f)
    except FileNotFoundError:
        params = {}
    for i, path in enumerate(paths):
        name = module_name(path)
        if os.path.isdir(f"{sysfs}/{name}"):
            continue
        err = finit_module(path, params.get(name, "") if i > 0 else "")
        if err:
            return f"insmod {path}: {err}"
    return ""


def main(argv):
    if len(argv) != 1 or argv[0] not in ("unload", "load"):
        print("usage: labmods.py unload|load", file=sys.stderr)
        return 2
    with open(CMDLINE) as f:
        paths = load_list(f.read())
    if not paths:
        print("labmods: no cnlab.load= on the kernel command line: the lab loaded no modules", file=sys.stderr)
        return 1
    err = (unload if argv[0] == "unload" else load)(paths)
    if err:
        print(f"labmods: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
