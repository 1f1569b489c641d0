"""cnlab: a QEMU integration lab for the Linux netlink connector and CBUS.

Standard library only at import time: ``python3 -m lab`` bootstraps the venv
with the system interpreter.  ``lab.hookimpl`` (the marker plugins use) is
resolved lazily, on first access, so pluggy is imported only by plugins.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str):
    if name == "hookimpl":
        from lab.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
