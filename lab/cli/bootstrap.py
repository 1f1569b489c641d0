"""First-run set-up behind ``python3 -m lab``: host packages, venv, hand-over.

Runs with the system Python and the standard library only.  It installs the
Debian packages cnlab needs (as root; otherwise it names them and the exact
command, exit status 2), creates ``.venv`` in the repository with cnlab and
its Python dependencies (again only when ``pyproject.toml`` changed), then
re-executes ``python -m lab`` inside it.  ``python3 -m lab test`` runs tox.
Each step names itself and its duration (:mod:`lab.cli.progress`); apt's
and pip's output goes to log files in the cache's ``logs`` folder and is
shown only when they fail.  ``python3 -m lab doctor`` skips all of it and
reports on the host as it is.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from lab.cli.progress import progress_output, verbosity_from_argv
from lab.errors import HostSetupError
from lab.host.cache import cache_root
from lab.host.packages import REQUIRED_PACKAGES, TEST_PACKAGES, ensure_packages
from lab.host.quiet import logs_dir, run_logged
from lab.host.steps import step

__all__ = ["bootstrap_and_run", "repo_root"]

#: Commands that run on the system Python as they are, without installing anything first.
NO_SETUP = ("doctor",)


def repo_root() -> Path:
    """The repository this ``lab`` package was imported from."""
    return Path(__file__).resolve().parents[2]


def _venv_dir() -> Path:
    return Path(os.environ.get("CNLAB_VENV", repo_root() / ".venv"))


def _in_venv(venv: Path) -> bool:
    return Path(sys.prefix).resolve() == venv.resolve()


def _before_command(argv: list[str]) -> list[str]:
    return argv[:argv.index("--")] if "--" in argv else argv


def _cache_from_argv(argv: list[str]) -> Path:
    """``--cache DIR`` among the options (where the set-up logs go), else the default cache."""
    args = _before_command(argv)
    for index, arg in enumerate(args):
        if arg == "--cache" and index + 1 < len(args):
            return Path(args[index + 1]).expanduser()
        if arg.startswith("--cache="):
            return Path(arg.partition("=")[2]).expanduser()
    return cache_root()


def _ensure_venv(venv: Path, log_dir: Path) -> Path:
    """``venv`` with cnlab and its dependencies installed (again only when ``pyproject.toml`` changed).

    pip's output goes to ``LOG_DIR/pip.log``; an error quotes its end and names the file.
    """
    python = venv / "bin" / "python"
    pyproject = repo_root() / "pyproject.toml"
    wanted = hashlib.sha256(pyproject.read_bytes()).hexdigest()
    stamp = venv / ".cnlab-installed"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log_path = log_dir / "pip.log"
    with step("Python environment", f"{venv}: cnlab and its Python packages"):
        if not python.exists():
            run_logged([sys.executable, "-m", "venv", str(venv)], log_path, f"python3 -m venv {venv}")
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        run_logged([*pip, "-e", f"{repo_root()}[test,debug]"], log_path, "pip install of cnlab's Python dependencies")
    stamp.write_text(wanted)
    return python


def bootstrap_and_run(argv: list[str]) -> int:
    """Make the host ready, then run ``cnlab argv`` (or tox for ``test``)."""
    try:
        venv = _venv_dir()
        words = _before_command(argv)
        if not _in_venv(venv) and not any(command in words for command in NO_SETUP):
            guest_terminal = "exec" in words or "shell" in words
            log_dir = logs_dir(_cache_from_argv(argv))
            with progress_output(sys.stderr if guest_terminal else sys.stdout, verbosity_from_argv(argv),
                                 live=not guest_terminal):
                if argv[:1] == ["test"]:  # the test suite also renders the reports in a browser
                    ensure_packages(REQUIRED_PACKAGES | TEST_PACKAGES, log_dir=log_dir)
                elif argv[:1] not in (["--help"], ["-h"]):
                    ensure_packages(log_dir=log_dir)
                python = _ensure_venv(venv, log_dir)
            os.execv(str(python), [str(python), "-m", "lab", *argv])
        if argv[:1] == ["test"]:
            tox = Path(sys.prefix) / "bin" / "tox"
            os.chdir(repo_root())
            os.execv(str(tox), [str(tox), *argv[1:]])
    except HostSetupError as exc:
        print(f"cnlab: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("cnlab: interrupted", file=sys.stderr)
        return 130
    from lab.cli.main import main

    return main(argv)
