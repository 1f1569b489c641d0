"""Extra Debian packages for the guest root disk: names checked, then looked up before the long build.

The lab config (``[lab] packages``), ``cnlab --package NAME`` and plugins (``lab_guest_packages_add``) may
name Debian packages for the guest.  The root disk is then built with them (``mmdebstrap --include``) and
cached by the hash of the sorted list (:mod:`lab.image.build`), so each list gets its own root disk and
the default (no extra package) keeps its key.

A name is checked twice before anything boots:

* its spelling, against Debian's package-name grammar (:func:`lab.config.check_package_names`), so
  nothing but a package name reaches the mmdebstrap command line;
* its existence, with the host's ``apt-cache policy`` (:func:`unknown_on_host`), before mmdebstrap runs,
  when the host runs the guest's suite and has package lists; otherwise mmdebstrap's own
  ``Unable to locate package NAME`` is turned into the same one-line error (:func:`unknown_in_log`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from lab.errors import ConfigError

__all__ = ["UnknownPackage", "unknown_on_host", "unknown_in_log", "host_suite"]

_UNABLE = re.compile(r"Unable to locate package (\S+)")
APT_LISTS = Path("/var/lib/apt/lists")


class UnknownPackage(ConfigError):
    """A guest package the guest's Debian suite does not have (exit status 2).

    :param names: the unknown names, sorted.
    """

    def __init__(self, names: Iterable[str], suite: str, how: str) -> None:
        self.names = tuple(sorted(names))
        listed = ", ".join(repr(n) for n in self.names)
        noun = "package" if len(self.names) == 1 else "packages"
        super().__init__(f"unknown Debian {noun} for the guest: {listed} (not in {suite}: {how}); "
                         "fix [lab] packages, --package or the plugin that asks for it")


def host_suite(os_release: Path = Path("/etc/os-release")) -> str | None:
    """The host's Debian codename (``bookworm``), or None if it cannot be read."""
    try:
        text = os_release.read_text()
    except OSError:
        return None
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?$", text, re.MULTILINE)
    return match.group(1) if match else None


def _policy_known(output: str) -> set[str]:
    """Names ``apt-cache policy`` output shows with a candidate from a repository (not only dpkg's status)."""
    known, name, candidate, repo = set(), None, False, False

    def close() -> None:
        if name is not None and candidate and repo:
            known.add(name)

    for line in output.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            close()
            name, candidate, repo = line[:-1], False, False
        elif line.strip().startswith("Candidate:"):
            candidate = line.split(":", 1)[1].strip() != "(none)"
        elif re.match(r"\s+\d+ \S+://", line):
            repo = True
    close()
    return known


def unknown_on_host(names: Iterable[str], suite: str, lists: Path = APT_LISTS) -> list[str] | None:
    """The names the host's apt does not know for ``suite``, or None when the host cannot tell.

    The host can tell when it runs ``suite`` itself, has ``apt-cache`` and has downloaded package lists
    (``apt-get update``); then a name without a candidate version from a repository is unknown.
    """
    names = list(names)
    apt_cache = shutil.which("apt-cache")
    if not names or apt_cache is None or host_suite() != suite:
        return None
    if not any(lists.glob("*_Packages*")):
        return None
    # the names are checked (check_package_names): none starts with "-"
    result = subprocess.run([apt_cache, "policy", *names], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return None
    known = _policy_known(result.stdout)
    return sorted(n for n in names if n not in known)


def unknown_in_log(text: str) -> list[str]:
    """The packages mmdebstrap's apt could not find (``E: Unable to locate package NAME``), sorted."""
    return sorted(set(_UNABLE.findall(text)))
