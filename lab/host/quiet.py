"""Set-up commands that keep quiet: their output goes to a log file, shown only when they fail.

pip, apt-get and mmdebstrap print pages a user cannot act on (on some
machines one pip warning per dependency about a configured index that does
not exist).  :func:`run_logged` writes a command's whole output to a log file
and, if the command fails, raises an error that quotes its last lines and
names the file.  Standard library only (the bootstrap uses it).
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

from lab.errors import HostSetupError, LabError

__all__ = ["logs_dir", "run_logged"]


def logs_dir(cache: Path) -> Path:
    """Where set-up and build logs go: ``CACHE/logs``."""
    return cache / "logs"


def _tail(text: str, lines: int) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(no output)"


def run_logged(argv: list[str], log_path: Path, what: str, *, env: dict[str, str] | None = None,
               cwd: Path | None = None, error: type[LabError] = HostSetupError, tail_lines: int = 3) -> None:
    """Run ``argv`` with stdout and stderr appended to ``log_path``; raise ``error`` if it fails.

    :param what: names the command in the error ("pip install of cnlab's dependencies").
    :param error: the exception class raised on a non-zero exit or a missing program.
    :param tail_lines: how many of the log's last lines the error quotes.
    """
    if isinstance(argv, str):
        raise TypeError("run_logged wants an argument list, not a string")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(argv)}\n")
        log.flush()
        start = log.tell()
        try:
            status = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, check=False).returncode
        except OSError as exc:
            raise error(f"{what} failed: cannot run {argv[0]}: {exc.strerror}; log: {log_path}") from exc
    if status != 0:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            log.seek(start)
            output = log.read()
        raise error(f"{what} failed (exit {status}): {_tail(output, tail_lines)}; full output in {log_path}")
