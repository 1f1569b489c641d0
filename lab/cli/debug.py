"""``cnlab debug VMCORE``: the lab module's state in a guest's vmcore (lab.guest.vmcore)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from lab.errors import UsageError
from lab.guest.panic import read_sidecar
from lab.guest.vmcore import format_state, read_module_state

__all__ = ["debug_vmcore"]


def debug_vmcore(core: Path, modules: list[Path], as_json: bool, out: TextIO) -> int:
    """Print the module's state in ``core``; the debug files come from ``modules`` or the dump's sidecar."""
    if not core.is_file():
        raise UsageError(f"{core}: no such file")
    sidecar = read_sidecar(core) or {}
    if not modules:
        modules = [Path(p) for p in sidecar.get("modules", ())]
    if not modules:
        raise UsageError(f"{core}: no {core.name}.json beside it naming the module's debug file; "
                         "give it with --module PATH.ko")
    state = read_module_state(core, modules)
    if as_json:
        print(json.dumps(state.to_dict() | {"dump": sidecar}, indent=1), file=out)
        return 0
    if sidecar:
        print(f"{core}: {sidecar.get('bytes', 0) / 2**20:.0f} MiB written in {sidecar.get('seconds')} s; "
              f"scenario {sidecar.get('scenario', '-')}, kernel {sidecar.get('kernel', '-')}", file=out)
    print(format_state(state), file=out)
    return 0
