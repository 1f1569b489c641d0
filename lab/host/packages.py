"""Host prerequisites: which Debian packages cnlab needs, and installing them.

Standard library only: this runs before the virtual environment exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from lab.errors import HostSetupError
from lab.host.cache import cache_root
from lab.host.quiet import logs_dir, run_logged
from lab.host.steps import step

__all__ = ["REQUIRED_PACKAGES", "TEST_PACKAGES", "missing_packages", "ensure_packages", "require_tool"]

#: Debian packages every part of cnlab needs on the host, with why.
REQUIRED_PACKAGES: dict[str, str] = {
    "qemu-system-x86": "runs the guests",
    "mmdebstrap": "builds the guest root filesystem",
    "e2fsprogs": "mkfs.ext4 -d turns it into a disk image",
    "gcc": "compiles the guest init and the module",
    "make": "kbuild",
    "libc6-dev": "static libc for the guest init",
    "kmod": "depmod for the guest's module tree",
    "python3-venv": "the virtual environment for cnlab's Python packages",
    "sparse": "the module's C=1 check",
    "openssh-client": "cnlab shell's interactive ssh",
    "linux-headers-cloud-amd64": "builds the module against Debian's cloud kernel",
    "lz4": "unpacks the cloud kernel once, so guests boot it without its decompressor (lab.image.pvh)",
}

#: Debian packages only the test suite needs (``python3 -m lab test`` installs them too), with why.
TEST_PACKAGES: dict[str, str] = {
    "chromium": "renders the HTML reports headless in tests/unit/report/test_report_in_chromium.py",
}


def _installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    probe = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.returncode == 0 and probe.stdout.startswith("ii")


def missing_packages(packages: dict[str, str] | None = None) -> list[str]:
    """The names among ``packages`` that dpkg does not report as installed."""
    return [name for name in (packages or REQUIRED_PACKAGES) if not _installed(name)]


def install_command(names: list[str]) -> list[str]:
    """The ``apt-get install`` argv for ``names``."""
    return ["apt-get", "install", "-y", "--no-install-recommends", *names]


def ensure_packages(packages: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
    """Install missing packages when root; otherwise explain how, and fail.

    apt's output goes to ``LOG_DIR/apt.log`` (default: the cache's ``logs``
    folder) and is quoted only if apt fails.
    """
    missing = missing_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise HostSetupError(
            f"missing Debian packages: {' '.join(missing)}; install them with: "
            f"sudo apt-get update && sudo {' '.join(install_command(missing))}"
        )
    log_path = (log_dir or logs_dir(cache_root())) / "apt.log"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with step("Debian packages", f"installing {len(missing)}: {' '.join(missing)}"):
        run_logged(["apt-get", "update"], log_path, "apt-get update", env=env)
        run_logged(install_command(missing), log_path, f"apt-get install {' '.join(missing)}", env=env)


def require_tool(name: str, package: str) -> str:
    """Path of a host tool, or a HostSetupError naming the package to install."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise HostSetupError(f"{name} not found; install the Debian package {package}")
    return path
