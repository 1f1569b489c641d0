"""Installing examples/cnlab-example-plugin into a folder, as a user would with pip (shared by the unit
test of the package and the lab test of docs/plugins.md's walk-through)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "cnlab-example-plugin"
SCENARIO = EXAMPLE / "scenarios" / "heartbeat-faults.toml"


def install_example(target: Path) -> Path:
    """``pip install --target TARGET`` a copy of the package (a build in place would leave ``build/`` and
    ``*.egg-info`` in the repository); returns ``target``.  Skips the test when pip cannot get setuptools."""
    source = target.parent / f"{target.name}-source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)]
    try:
        import wheel  # noqa: F401
    except ImportError:
        pass  # build in isolation (pip fetches setuptools from the configured index)
    else:
        argv.insert(4, "--no-build-isolation")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No matching distribution found for setuptools" in proc.stderr:
        pytest.skip("pip cannot fetch setuptools to build the example (no package index)")
    assert proc.returncode == 0, proc.stderr
    assert (target / "cnlab_example" / "guest" / "watch.py").is_file(), "the guest programs were not installed"
    return target
