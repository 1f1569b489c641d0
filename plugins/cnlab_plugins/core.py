"""Essential plugin: the fallbacks every run needs.

* ships ``lab/kabi.py`` and the built-in guest programs' shared helpers into
  every guest (``lab_guest_files_add``);
* answers ``lab_report_status`` last with PASS/FAIL.
"""

from __future__ import annotations

from pathlib import Path

import lab
from lab import hookimpl
from lab.plugin import GUEST_PLUGIN_DIR, GuestFile, ScenarioResult


@hookimpl
def lab_guest_files_add(config) -> list[GuestFile]:
    return [GuestFile(Path(lab.__file__).resolve().parent / "kabi.py", f"{GUEST_PLUGIN_DIR}/kabi.py")]


@hookimpl(trylast=True)
def lab_report_status(result: ScenarioResult) -> str:
    return "PASS" if result.passed else "FAIL"
