"""``python -m lab.cli.module_lint``: build kmod/ with W=1 and sparse (C=1); any warning fails.

Builds in a scratch copy so the worktree stays clean.  Exit status 0 only
when the compiler and sparse printed no warning or error at all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lab.errors import LabError
from lab.guest.labsetup import Lab

__all__ = ["lint_module"]

_NOISE = re.compile(r"warning|error", re.IGNORECASE)


def lint_module(kbuild: Path, source: Path) -> list[str]:
    """Diagnostics from a W=1 C=1 build of ``source`` against ``kbuild``."""
    with tempfile.TemporaryDirectory(prefix="cnlab-kmodlint-") as tmp:
        tree = Path(tmp) / "kmod"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*.cmd", "*.mod*", "tools"))
        result = subprocess.run(["make", "-C", str(kbuild), f"M={tree}", "W=1", "C=1", "modules"],
                                capture_output=True, text=True, check=False)
        lines = (result.stdout + result.stderr).splitlines()
        problems = [line for line in lines if _NOISE.search(line) and "Skipping BTF" not in line]
        if result.returncode != 0 and not problems:
            problems = lines[-5:] or [f"make exited with {result.returncode}"]
        return problems


def main() -> int:
    try:
        lab = Lab()
        kbuild = lab.kernel.kbuild_dir
    except LabError as exc:
        print(f"kmodlint: error: {exc}", file=sys.stderr)
        return 2
    if kbuild is None:
        print("kmodlint: error: no kernel headers for the guest kernel", file=sys.stderr)
        return 2
    from lab.image.module import kmod_dir

    problems = lint_module(kbuild, kmod_dir())
    for line in problems:
        print(line)
    print(f"kmodlint: {len(problems)} warnings/errors (W=1 C=1 against {kbuild.name})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
