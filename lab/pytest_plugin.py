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
``scenario_*.toml``) are collected as test items (marked ``lab``): each runs on
its worker's guest (one per worker, reused while the shape fits, as the engine
does; a crashed guest's scenario runs once more on a fresh one) and fails with
the invariants that did not hold.

Several hosts (pytest-xdist over SSH, :mod:`lab.cli.distributed`):
``--cnlab-run JSON`` makes every worker collect that selection of scenarios as
items (``cnlab run --hosts`` writes it); ``--cnlab-results FILE`` has the
controller write each scenario's record once, naming the host it ran on.
With ``--tx ssh=...`` every host is checked before it gets work, and a lost
host's scenarios run again on the others.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.engine.plan import plan_scenario
from lab.engine.scenario import load_scenario
from lab.guest.files import install_guest_programs
from lab.guest.labsetup import Lab, LabOptions
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape
from lab.plugin.model import Scenario


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("cnlab_scenarios", "glob of scenario files collected as tests", default="scenario_*.toml")
    group = parser.getgroup("cnlab")
    group.addoption("--cnlab-run", default=None, metavar="JSON",
                    help="collect this selection of scenarios as the session's items (cnlab run --hosts writes it)")
    group.addoption("--cnlab-results", default=None, metavar="FILE",
                    help="write each scenario item's result record to FILE (JSON lines), naming the host it ran on")


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if fnmatch.fnmatch(file_path.name, parent.config.getini("cnlab_scenarios")):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFailed(Exception):
    """A collected scenario finished with failed invariants (or an error)."""


def _scenario_plugins(config: pytest.Config, options=None):
    """The plugin manager scenario items use (built once per session; ``options``, else ./cnlab.toml if
    present)."""
    from lab.engine.run import PluginOptions, plugin_manager

    pm = config.stash.get(_PM_KEY, None)
    if pm is None:
        local = Path("cnlab.toml")
        pm = plugin_manager(options or PluginOptions(local if local.is_file() else None))
        config.stash[_PM_KEY] = pm
    return pm


_PM_KEY = pytest.StashKey[object]()


class ScenarioFile(pytest.File):
    """A scenario TOML file: one test item (read and planned at collection, so a bad file fails early)."""

    def collect(self):
        pm = _scenario_plugins(self.config)
        scenario = load_scenario(self.path, pm.registries)
        plan_scenario(scenario, pm.registries)
        item = ScenarioItem.from_parent(self, name=scenario.name, scenario=scenario)
        item.add_marker(pytest.mark.lab)
        yield item


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session):
    """With ``--cnlab-run``: the items are that selection's scenarios, in its order (not on the xdist controller,
    which collects nothing)."""
    spec = session.config.getoption("cnlab_run")
    if not spec or session.config.pluginmanager.has_plugin("dsession"):
        return None
    config = session.config
    run = json.loads(spec)
    session.items = [ScenarioItem.from_parent(session, name=s.name, nodeid=f"cnlab::{s.name}", scenario=s)
                     for s in _run_scenarios(config, run)]
    for item in session.items:
        item.add_marker(pytest.mark.lab)
    session.testscollected = len(session.items)
    config.hook.pytest_collection_modifyitems(session=session, config=config, items=session.items)
    config.hook.pytest_collection_finish(session=session)
    return True


def _run_scenarios(config: pytest.Config, run: dict) -> list[Scenario]:
    from lab.engine.run import PluginOptions
    from lab.engine.sets import full_matrix

    plugins = run.get("plugins") or {}
    options = PluginOptions(Path(plugins["config"]) if plugins.get("config") else None,
                            tuple(plugins.get("plugin_args", ())),
                            tuple(Path(p) for p in plugins.get("plugins_dirs", ())),
                            tuple(plugins.get("packages", ())))
    pm = _scenario_plugins(config, options)
    folder = Path(tempfile.mkdtemp(prefix="cnlab-run-"))
    matrix = None
    scenarios = []
    for index, entry in enumerate(run["scenarios"]):
        if entry.get("matrix"):
            matrix = matrix or {s.name: s for s in full_matrix(pm.registries)}
            scenario = matrix[entry["name"]]
        else:
            path = folder / f"{index:04d}-{entry['file']}"
            path.write_text(entry["text"])
            scenario = load_scenario(path, pm.registries)
        plan_scenario(scenario, pm.registries)
        scenarios.append(scenario)
    config.stash[_RUN_LAB_KEY] = run.get("lab") or {}
    return scenarios


_RUN_LAB_KEY = pytest.StashKey[dict]()
_SLOT_KEY = pytest.StashKey[object]()


def _options_from_environment() -> LabOptions:
    from lab.config import KERNEL_FLAVOURS

    flavour = os.environ.get("CNLAB_KERNEL_FLAVOUR", "cloud")
    if flavour not in KERNEL_FLAVOURS:
        raise pytest.UsageError(f"CNLAB_KERNEL_FLAVOUR={flavour!r} is not one of {', '.join(KERNEL_FLAVOURS)}")
    return LabOptions(accel=os.environ.get("CNLAB_ACCEL", "auto"),
                      tcg_threads=os.environ.get("CNLAB_TCG_THREADS", "auto"),
                      guests_at_once=int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
                      snapshot=os.environ.get("CNLAB_SNAPSHOT", "1") != "0",
                      kernel_flavour=flavour,
                      # cnlab mutate --suite pytest: the lab module built from a mutant's copy of kmod/
                      module_source=Path(os.environ["CNLAB_KMOD"]) if os.environ.get("CNLAB_KMOD") else None)


class ScenarioItem(pytest.Item):
    """Runs one scenario on a fresh guest of its shape."""

    def __init__(self, *, scenario: Scenario, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario

    def runtest(self) -> None:
        record = _slot(self.config).run(self.scenario)
        self.user_properties.append(("metrics", dict(record.metrics)))
        self.user_properties.append(("cnlab_record", record.to_json()))
        if not record.passed:
            raise ScenarioFailed(record)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ScenarioFailed):
            record = excinfo.value.args[0]
            lines = [f"{v.name}: {v.detail}" for v in record.verdicts if not v.ok]
            lines += [f"{r['kind']} {r['fingerprint']}\n{r['excerpt']}" for r in record.kernel_reports]
            return "\n".join(lines)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"scenario {self.scenario.name}"


def _slot(config: pytest.Config):
    """This worker's guest slot (one guest, reused across scenario items; stopped when the session ends)."""
    from lab.engine.slot import GuestSlot

    slot = config.stash.get(_SLOT_KEY, None)
    if slot is None:
        run_lab = config.stash.get(_RUN_LAB_KEY, {})
        options = _options_from_environment()
        if run_lab:
            options = LabOptions(accel=run_lab.get("accel", "auto"), tcg_threads=run_lab.get("tcg_threads", "auto"),
                                 guests_at_once=int(run_lab.get("guests_at_once", 1)),
                                 module_source=options.module_source)
        base = os.environ.get("CNLAB_LOG_DIR")
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        pm = _scenario_plugins(config)
        slot = GuestSlot(Lab(_with_plugin_modules(options, pm)), pm, Path(base) / worker if base else None,
                         name=worker)
        config.stash[_SLOT_KEY] = slot
    return slot


def _with_plugin_modules(options: LabOptions, pm) -> LabOptions:
    """``options`` with the extra modules the plugins declare (``lab_kernel_modules_add``) and the guest packages
    of the config and the plugins (``lab_guest_packages_add``), as ``cnlab run``."""
    import dataclasses

    from lab.engine.hooks import guest_packages, kernel_module_dirs

    folders = kernel_module_dirs(pm)
    packages = guest_packages(pm)
    if folders:
        options = dataclasses.replace(options, extra_modules=folders)
    return dataclasses.replace(options, packages=packages) if packages else options


def pytest_sessionfinish(session: pytest.Session) -> None:
    slot = session.config.stash.get(_SLOT_KEY, None)
    if slot is not None:
        slot.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: boots real QEMU guests and loads the real module")
    config.addinivalue_line(
        "markers", "cnlab_guest(cpus=2, mem=1024, cmdline=(), module=True): shape of the cnlab_guest fixture"
    )
    controller = not hasattr(config, "workerinput")
    remote = any("ssh=" in tx for tx in (config.getoption("tx", None) or []))
    if controller and (remote or config.getoption("cnlab_results")) and \
            not config.pluginmanager.has_plugin("cnlab-distributed"):
        from lab.cli.distributed import DistributedRun

        config.pluginmanager.register(DistributedRun(config), "cnlab-distributed")


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
