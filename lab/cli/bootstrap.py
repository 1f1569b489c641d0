"""First-run set-up behind ``python3 -m lab``: host packages, venv, hand-over.

Runs with the system Python and the standard library only.  It installs the
Debian packages cnlab needs (as root; otherwise it names them and the exact
command, exit status 2), creates ``.venv`` in the repository with cnlab and
its Python dependencies (again only when ``pyproject.toml`` changed), then
re-executes ``python -m lab`` inside it.  ``python3 -m lab test`` runs tox.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from lab.errors import HostSetupError
from lab.host.packages import ensure_packages

__all__ = ["bootstrap_and_run", "repo_root"]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _venv_dir() -> Path:
    return Path(os.environ.get("CNLAB_VENV", repo_root() / ".venv"))


def _in_venv(venv: Path) -> bool:
    return Path(sys.prefix).resolve() == venv.resolve()


def _ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    pyproject = repo_root() / "pyproject.toml"
    wanted = hashlib.sha256(pyproject.read_bytes()).hexdigest()
    stamp = venv / ".cnlab-installed"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"cnlab: setting up the virtual environment in {venv}", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run([*pip, "-e", f"{repo_root()}[test]"], check=False)
    if result.returncode != 0:
        raise HostSetupError("pip install of cnlab's Python dependencies failed (see above)")
    stamp.write_text(wanted)
    return python


def bootstrap_and_run(argv: list[str]) -> int:
    """Make the host ready, then run ``cnlab argv`` (or tox for ``test``)."""
    try:
        venv = _venv_dir()
        if not _in_venv(venv):
            if argv[:1] not in (["--help"], ["-h"]):
                ensure_packages()
            python = _ensure_venv(venv)
            os.execv(str(python), [str(python), "-m", "lab", *argv])
        if argv[:1] == ["test"]:
            tox = Path(sys.prefix) / "bin" / "tox"
            os.chdir(repo_root())
            os.execv(str(tox), [str(tox), *argv[1:]])
    except HostSetupError as exc:
        print(f"cnlab: error: {exc}", file=sys.stderr)
        return exc.exit_status
    from lab.cli.main import main

    return main(argv)
