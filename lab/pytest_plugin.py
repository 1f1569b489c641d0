"""cnlab's pytest plugin: fixtures for the lab and for guests.

Registered through the ``pytest11`` entry point, so plugin authors get the
same fixtures as cnlab's own tests:

* ``cnlab_lab`` (session): a :class:`~lab.guest.labsetup.Lab`; the image and the
  module are built once, under file locks, however many xdist workers run;
* ``cnlab_guest_factory``: boots guests (``factory(cpus=2, …)``) and stops
  them all at the end of the test;
* ``cnlab_guest``: one guest shaped by ``@pytest.mark.cnlab_guest(cpus=N,
  mem=MB, cmdline=[...], module=True)``, with the guest-side programs
  installed; its console log is kept under ``CNLAB_LOG_DIR`` if set.

Scenario files named like the ini option ``cnlab_scenarios`` (default
``scenario_*.toml``) are collected as test items (marked ``lab``): each boots
a guest of its shape, runs, and fails with the invariants that did not hold.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.engine.scenario import Scenario, load_scenario
from lab.guest.files import install_guest_programs
from lab.guest.labsetup import Lab, LabOptions
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("cnlab_scenarios", "glob of scenario files collected as tests", default="scenario_*.toml")


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if fnmatch.fnmatch(file_path.name, parent.config.getini("cnlab_scenarios")):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFailed(Exception):
    """A collected scenario finished with failed invariants (or an error)."""


class ScenarioFile(pytest.File):
    """A scenario TOML file: one test item."""

    def collect(self):
        scenario = load_scenario(self.path)
        item = ScenarioItem.from_parent(self, name=scenario.name, scenario=scenario)
        item.add_marker(pytest.mark.lab)
        yield item


def _options_from_environment() -> LabOptions:
    return LabOptions(accel=os.environ.get("CNLAB_ACCEL", "auto"),
                      tcg_threads=os.environ.get("CNLAB_TCG_THREADS", "auto"),
                      guests_at_once=int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
                      snapshot=os.environ.get("CNLAB_SNAPSHOT", "1") != "0")


class ScenarioItem(pytest.Item):
    """Runs one scenario on a fresh guest of its shape."""

    def __init__(self, *, scenario: Scenario, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario

    def runtest(self) -> None:
        from lab.engine.run import execute_any, plugin_manager, scenario_guest_spec

        lab = Lab(_options_from_environment())
        pm = plugin_manager(None)
        with Guest(scenario_guest_spec(lab, pm, self.scenario, "scenario")) as guest:
            lib = install_guest_programs(guest)
            record = execute_any(pm, guest, lib, self.scenario, lambda phase: None)
        self.user_properties.append(("metrics", record["metrics"]))
        if record["status"] != "passed":
            raise ScenarioFailed(record)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ScenarioFailed):
            record = excinfo.value.args[0]
            lines = [f"{v['name']}: {v['detail']}" for v in record["invariants"] if not v["ok"]]
            lines += [f"{r['kind']} {r['fingerprint']}\n{r['excerpt']}" for r in record["kernel_reports"]]
            return "\n".join(lines)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"scenario {self.scenario.name}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: boots real QEMU guests and loads the real module")
    config.addinivalue_line(
        "markers", "cnlab_guest(cpus=2, mem=1024, cmdline=(), module=True): shape of the cnlab_guest fixture"
    )


@pytest.fixture(scope="session")
def cnlab_lab() -> Lab:
    """The lab (cache from ``CNLAB_CACHE``, accelerator from ``CNLAB_ACCEL``, TCG
    threading from ``CNLAB_TCG_THREADS``; each xdist worker counts as a guest
    running at once)."""
    lab = Lab(_options_from_environment())
    lab.image  # noqa: B018 - build once per session (file-locked across workers)
    return lab


def _log_dir(request: pytest.FixtureRequest) -> Path | None:
    base = os.environ.get("CNLAB_LOG_DIR")
    if not base:
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return Path(base) / worker / request.node.name.replace("/", "_")


@pytest.fixture
def cnlab_guest_factory(cnlab_lab: Lab, request: pytest.FixtureRequest) -> Iterator:
    """Boot guests on demand; every guest is stopped when the test ends."""
    guests: list[Guest] = []

    def boot(cpus: int = 2, mem: int = 1024, cmdline: tuple[str, ...] = (), module: bool = True,
             load_module: bool = True, name: str = "guest") -> Guest:
        spec = cnlab_lab.guest_spec(GuestShape(cpus=cpus, memory_mb=mem), name=name, with_module=module,
                                    load_module=load_module, cmdline=tuple(cmdline))
        guest = Guest(spec, log_dir=_log_dir(request))
        guests.append(guest)
        guest.start()
        return guest

    yield boot
    for guest in guests:
        guest.stop()


@pytest.fixture
def cnlab_guest(cnlab_guest_factory, request: pytest.FixtureRequest) -> Guest:
    """One guest shaped by the ``cnlab_guest`` marker, guest programs installed."""
    marker = request.node.get_closest_marker("cnlab_guest")
    kwargs = dict(marker.kwargs) if marker else {}
    guest = cnlab_guest_factory(**kwargs)
    install_guest_programs(guest)
    return guest
