"""Shared helpers for tests of programs that run inside a guest (they import ``kabi`` from their own folder)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
LAB_GUESTSIDE = ROOT / "lab" / "guestside"
PLUGIN_GUESTSIDE = ROOT / "plugins" / "cnlab_plugins" / "guestside"


def load_guest_module(name: str, folder: Path = LAB_GUESTSIDE):
    """Import a guest program as the guest would: ``kabi`` and its siblings importable by plain name."""
    paths = [str(ROOT / "lab"), str(LAB_GUESTSIDE)]
    sys.path[:0] = paths
    try:
        spec = importlib.util.spec_from_file_location(f"guestside_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        for p in paths:
            sys.path.remove(p)
