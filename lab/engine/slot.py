"""One guest slot for front ends that run scenarios one by one (the pytest items, on local or remote workers).

It does what an engine worker (:mod:`lab.engine.run`) does for each scenario: reuse a healthy guest of the
right shape, boot one otherwise, run the scenario, turn a guest failure into an ``error`` record, and retry a
scenario whose guest crashed once on a fresh guest (``flaky`` if the retry passes).  Every record carries the
run's environment (kernel, accelerator, QEMU, module source hash) and the host it ran on.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable
from pathlib import Path

from lab.engine.execute import execute_scenario
from lab.engine.hooks import install_lab_files
from lab.engine.plan import guest_network
from lab.engine.run import _environment, _error_record, _reusable, scenario_guest_spec
from lab.errors import LabError
from lab.guest.labsetup import Lab
from lab.guest.machine import Guest
from lab.plugin.manager import LabPluginManager
from lab.plugin.model import Scenario, ScenarioResult

__all__ = ["GuestSlot"]


class GuestSlot:
    """At most one guest at a time, reused across scenarios of its shape; :meth:`close` stops it."""

    def __init__(self, lab: Lab, pm: LabPluginManager, log_dir: Path | None = None, name: str = "slot",
                 host: str | None = None) -> None:
        self.lab = lab
        self.pm = pm
        self.log_dir = log_dir
        self.name = name
        self.host = host or socket.gethostname()
        self._guest: Guest | None = None
        self._lib = ""
        self._booted = 0
        self._environment: dict | None = None

    @property
    def environment(self) -> dict:
        """The run's environment on this host (``host`` included); builds the image and module if missing."""
        if self._environment is None:
            self._environment = {**_environment(self.lab), "host": self.host}
        return self._environment

    def run(self, scenario: Scenario, progress: Callable[[str], None] | None = None) -> ScenarioResult:
        """Run ``scenario``; a crashed guest's scenario runs once more on a fresh guest."""
        record = self._attempt(scenario, 1, False, progress)
        if record.status == "error":
            record = self._attempt(scenario, 2, True, progress)
            record = dataclasses.replace(record, retried=True, flaky=record.passed)
        return record

    def _attempt(self, scenario: Scenario, attempt: int, fresh: bool,
                 progress: Callable[[str], None] | None) -> ScenarioResult:
        started = time.monotonic()
        boot_s = 0.0
        new_guest = False
        environment = self.environment
        try:
            network = guest_network(self.pm.registries, scenario)
            if self._guest is not None and not _reusable(self._guest, scenario, network, fresh):
                self.close()
            if self._guest is None:
                if progress:
                    progress("boot")
                self._booted += 1
                spec = scenario_guest_spec(self.lab, self.pm, scenario, f"{self.name}g{self._booted}")
                self._guest = Guest(spec, log_dir=self.log_dir)
                self._guest.start()
                boot_s = self._guest.timing.ssh
                self._lib = install_lab_files(self.pm, self._guest)
                new_guest = True
            record = execute_scenario(self.pm, self._guest, scenario, self._lib, progress or (lambda phase: None),
                                      files_installed=True, from_boot=new_guest)
        except LabError as exc:
            console, dead = "", self._guest
            if self._guest is not None:
                self._guest.stop()
                console = self._guest.console_text()
                self._guest = None
            record = _error_record(scenario, exc, console, started, dead)
        return dataclasses.replace(
            record, attempt=attempt, boot_s=round(boot_s, 3), wall_s=round(time.monotonic() - started, 3),
            env=environment,
            guest={"cpus": scenario.cpus, "memory": scenario.memory, "cmdline": list(scenario.cmdline),
                   "accel": self.lab.accel_for(scenario.cpus).label})

    def close(self) -> None:
        """Stop the guest, if there is one."""
        if self._guest is not None:
            self._guest.stop()
            self._guest = None
