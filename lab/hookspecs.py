"""The cnlab hook contract: every hook a plugin may implement.

Plugins mark implementations with ``lab.hookimpl``; a function named like a
hook but not marked is never called (the manager reports it).  Hooks are
named ``lab_<object>_<verb>`` and grouped by lifecycle phase::

    configure   lab_settings_declare ─► lab_plugin_configure
    register    lab_emulators_register, lab_consumers_register, lab_faults_register, lab_events_register
    guest       lab_kernel_modules_add, lab_guest_packages_add, lab_qemu_args_add, lab_kernel_cmdline_add,
                lab_guest_files_add
                ─► boot ─► lab_guest_ready
    scenario    lab_scenario_start ─► lab_phase_run (per phase; the load runs the guest agent) ─► lab_scenario_stop
    results     lab_result_collect ─► lab_result_check ─► lab_result_judged
    report      lab_report_status, lab_report_write
    teardown    lab_plugin_unconfigure

Hooks marked *per plugin* are called once for each plugin on its own, in
load order (built-ins first), with that plugin's own ``settings``: the
manager knows whose answer is whose.  The others are ordinary pluggy
broadcasts.  Every hook's implementation may accept fewer arguments than the
spec lists; specs may grow arguments in later versions.  The engine calls
every hook through ``lab.plugin.call_hook`` (or per plugin), so a plugin
raising fails the scenario it raised in, naming the plugin and the hook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from lab.config import LabConfig, Setting
    from lab.guest.machine import Guest
    from lab.guest.qemu_argv import GuestShape
    from lab.plugin.model import GuestFile, PhaseInfo, Scenario, ScenarioResult, Stash, Verdict
    from lab.plugin.registry import ConsumerRegistry, EmulatorRegistry, EventRegistry, FaultRegistry

__all__ = [
    "PROJECT_NAME",
    "hookspec",
    "hookimpl",
    "lab_settings_declare",
    "lab_plugin_configure",
    "lab_emulators_register",
    "lab_consumers_register",
    "lab_faults_register",
    "lab_events_register",
    "lab_kernel_modules_add",
    "lab_guest_packages_add",
    "lab_qemu_args_add",
    "lab_kernel_cmdline_add",
    "lab_guest_files_add",
    "lab_guest_ready",
    "lab_scenario_start",
    "lab_phase_run",
    "lab_scenario_stop",
    "lab_result_collect",
    "lab_result_check",
    "lab_result_judged",
    "lab_report_status",
    "lab_report_write",
    "lab_plugin_unconfigure",
]

#: The pluggy project name: markers and the manager must agree on it.
PROJECT_NAME = "lab"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------
# Configure: once per run, before anything else.


@hookspec
def lab_settings_declare() -> Sequence[Setting] | None:
    """Declare the keys this plugin accepts in its ``[plugins.<name>]`` config table.

    Called **per plugin**, once, right after all plugins are loaded, before
    :func:`lab_plugin_configure`.  The manager validates the plugin's table
    against the declaration: an undeclared key or a value of the wrong type is
    a ``ConfigError`` naming the plugin and the key.

    :return: a sequence of :class:`lab.config.Setting` (key, type, default,
        description), or None for "no settings".  Results are not merged across
        plugins: each plugin's answer applies to its own table only.

    .. versionadded:: 0.1
    """


@hookspec
def lab_plugin_configure(config: LabConfig, settings: Mapping[str, Any]) -> None:
    """Configure this plugin from the lab config.

    Called **per plugin**, once, after settings validation and before the
    registration hooks.

    :param config: the whole lab config (read-only).
    :param settings: this plugin's validated settings: every declared key, with
        defaults filled in (read-only mapping).
    :return: ignored.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------
# Register: fill the registries the scenario engine picks from.


@hookspec
def lab_emulators_register(registry: EmulatorRegistry, settings: Mapping[str, Any]) -> None:
    """Add kernel-subsystem emulators with ``registry.add_emulator(EmulatorSpec(...))``.

    Called **per plugin**, once, after :func:`lab_plugin_configure`.  The
    registry stamps the calling plugin's name on each spec; a clash of name,
    connector id or group with another plugin's emulator raises ``PluginError``
    naming both plugins.

    :param registry: the emulator registry (a view bound to this plugin).
    :param settings: this plugin's validated settings (as given to :func:`lab_plugin_configure`).
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def lab_consumers_register(registry: ConsumerRegistry, settings: Mapping[str, Any]) -> None:
    """Add userspace consumers with ``registry.add_consumer(ConsumerSpec(...))``.

    Called **per plugin**, once, after :func:`lab_emulators_register`.

    :param registry: the consumer registry (a view bound to this plugin).
    :param settings: this plugin's validated settings (as given to :func:`lab_plugin_configure`).
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def lab_faults_register(registry: FaultRegistry, settings: Mapping[str, Any]) -> None:
    """Add fault injectors with ``registry.add_fault(FaultSpec(...))``.

    Called **per plugin**, once, after :func:`lab_consumers_register`.  A
    fault's factory returns a :class:`lab.plugin.objects.Fault` (inject and
    restore actions); the scenario says when it fires (``at``, ``every``,
    ``on``) and the guest agent fires it.

    :param registry: the fault registry (a view bound to this plugin).
    :param settings: this plugin's validated settings (as given to :func:`lab_plugin_configure`).
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def lab_events_register(registry: EventRegistry, settings: Mapping[str, Any]) -> None:
    """Add events faults can wait for (``on = NAME``) with ``registry.add_event(EventSpec(...))``.

    Called **per plugin**, once, after :func:`lab_faults_register`.  An event
    is something the guest agent counts (``lab.plugin.objects.FileCounter``:
    a number in a guest file); a fault ``on`` it fires once the count
    reaches the fault's ``threshold``.

    :param registry: the event registry (a view bound to this plugin).
    :param settings: this plugin's validated settings.
    :return: ignored.

    .. versionadded:: 0.2
    """


# ---------------------------------------------------------------------------
# Guest set-up: contributions gathered before each guest boots.


@hookspec
def lab_kernel_modules_add(config: LabConfig) -> Sequence[Path | str] | None:
    """Contribute kernel module source folders to build and load in every guest, after the lab module.

    Called once per command, before anything boots (as ``cnlab --module DIR`` is read).  Each folder
    holds a Kbuild (or Makefile) for an out-of-tree module; cnlab builds it against the guest kernel's
    headers with the lab module's ``Module.symvers`` (``KBUILD_EXTRA_SYMBOLS``: it may call
    ``cbus_insert()`` and the rest of the exported CBUS API) and the lab module's sources on the include
    path (``#include <cbus.h>``), plus the ``Module.symvers`` of the folders built before it (``--module``
    folders first, then the plugins'), caches the build by the hash of its sources, the kernel and the lab
    module, ships it in every guest's per-boot archive and loads it after ``cnlab.ko``, each module after
    those it depends on.  The ``module-reload`` fault unloads and reloads it with the lab module.  A
    folder that does not build stops the command with the compiler's first error (exit 2) before any
    guest boots.  All results are used; a folder named twice is built once.

    :param config: the lab config.
    :return: folders (absolute paths, or relative to the current directory), or None.

    .. versionadded:: 0.2
    """


@hookspec
def lab_guest_packages_add(config: LabConfig) -> Sequence[str] | None:
    """Contribute Debian packages the guest root disk must have (a real tool a consumer runs, say).

    Called once per command, before anything is built or boots (as ``[lab] packages`` and ``--package``
    are read).  Every name is added to the config's ``packages``; the root disk is built with all of them
    (``mmdebstrap --include``) and cached by the hash of the sorted list, so each list has its own root
    disk (and saved guest states of its own).  A name that is not a Debian package name is a
    ``PluginError``; a package the guest's suite (bookworm) does not have stops the command with a
    one-line error naming it (exit 2) before any guest boots.  All results are used; a name given twice
    counts once.

    :param config: the lab config (``config.packages``: the packages the config and the command line name).
    :return: package names, or None.

    .. versionadded:: 0.2
    """


@hookspec
def lab_qemu_args_add(config: LabConfig, shape: GuestShape) -> Sequence[str] | None:
    """Contribute extra QEMU arguments for a guest about to boot.

    Called before each boot.  All results are used, concatenated in hook call
    order (last registered first, ``tryfirst``/``trylast`` respected).

    :param config: the lab config.
    :param shape: the guest's shape (vCPUs, memory).
    :return: an argument list (an argv fragment, e.g. ``["-device", "virtio-rng-pci"]``), or None.

    .. versionadded:: 0.1
    """


@hookspec
def lab_kernel_cmdline_add(config: LabConfig, shape: GuestShape) -> Sequence[str] | None:
    """Contribute kernel command-line arguments for a guest about to boot.

    Called before each boot.  All results are used, in hook call order; each
    item is one argument (``"slub_debug=FZPU"``), validated by the lab like
    ``--append``.

    :param config: the lab config.
    :param shape: the guest's shape.
    :return: a list of arguments, or None.

    .. versionadded:: 0.1
    """


@hookspec
def lab_guest_files_add(config: LabConfig) -> Sequence[GuestFile] | None:
    """Contribute files to copy into each guest once it is ready.

    Called before each boot; the files are copied after SSH is up and before
    :func:`lab_guest_ready`.  All results are used; two plugins naming the same
    destination is an error.

    :param config: the lab config.
    :return: a list of :class:`lab.plugin.GuestFile`, or None.

    .. versionadded:: 0.1
    """


@hookspec
def lab_guest_ready(guest: Guest, scenario: Scenario, settings: Mapping[str, Any]) -> None:
    """A scenario's guest is up, the module is loaded and plugin files are installed.

    Called **per plugin**, once per scenario, before :func:`lab_scenario_start`.
    Use it for guest-wide preparation (sysctls, extra modules).

    :param guest: the running guest (``guest.run(argv)``, ``guest.ssh.put()``).
    :param scenario: the scenario about to run.
    :param settings: this plugin's validated settings.
    :return: ignored.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------
# Scenario: start, phases, stop.


@hookspec
def lab_scenario_start(scenario: Scenario, guest: Guest, stash: Stash, settings: Mapping[str, Any]) -> None:
    """A scenario starts: prepare what the plugin needs for it.

    Called **per plugin**, once per scenario, after :func:`lab_guest_ready`.
    An exception fails this scenario (``PluginError`` naming the plugin and
    the hook); the other scenarios carry on.

    :param scenario: the scenario.
    :param guest: its guest.
    :param stash: per-scenario state shared between hooks (typed keys).
    :param settings: this plugin's validated settings.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def lab_phase_run(scenario: Scenario, phase: PhaseInfo, guest: Guest, stash: Stash) -> None:
    """Run one phase of a scenario (``setup``, ``load``, ``drain``, ``verify``).

    Called once per phase, in ``scenario.phases`` order, as a broadcast.  In
    ``load`` the essential ``core`` plugin runs the guest agent: consumers,
    generators, live sources and every fault on its trigger.  Faults are not
    phase wrappers (register a ``FaultSpec``); a wrapper is the way to run
    something beside the load::

        @hookimpl(wrapper=True)
        def lab_phase_run(scenario, phase, guest, stash):
            if phase.name != "load":
                return (yield)
            monitor = start_monitor(guest)
            try:
                return (yield)
            finally:
                stash[MONITOR] = monitor.stop()

    ``stash[lab.plugin.SETTINGS]`` holds every plugin's settings by plugin name.

    :param scenario: the scenario.
    :param phase: the phase being run.
    :param guest: its guest.
    :param stash: per-scenario state.
    :return: ignored (wrappers must pass on the inner result).

    .. versionadded:: 0.1
    """


@hookspec
def lab_scenario_stop(scenario: Scenario, guest: Guest, stash: Stash, error: BaseException | None,
                      settings: Mapping[str, Any]) -> None:
    """A scenario ends: stop what :func:`lab_scenario_start` started.

    Called **per plugin**, once per scenario once :func:`lab_scenario_start`
    has been called, also when the start or a phase failed (then ``error`` is
    the exception).  Implementations must be safe to call after a partial start.

    :param scenario: the scenario.
    :param guest: its guest (may be dead if ``error`` is a guest crash).
    :param stash: per-scenario state.
    :param error: what ended the scenario early, or None.
    :param settings: this plugin's validated settings.
    :return: ignored.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------
# Results.


@hookspec
def lab_result_collect(scenario: Scenario, guest: Guest, stash: Stash,
                       settings: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Gather results (reports of the plugin's own guest programs, statistics) after the scenario stopped.

    Called **per plugin**, once per scenario, after :func:`lab_scenario_stop`,
    while the guest is still up.  The engine stores each plugin's mapping
    under the plugin's name; the guest agent's report is already there as
    ``agent`` (every consumer's report, generator and CBUS counts, faults).

    :param scenario: the scenario.
    :param guest: its guest.
    :param stash: per-scenario state.
    :param settings: this plugin's validated settings.
    :return: a JSON-serialisable mapping, or None.

    .. versionadded:: 0.1
    """


@hookspec
def lab_result_check(scenario: Scenario, data: Mapping[str, Any],
                     settings: Mapping[str, Any]) -> Sequence[str | Verdict] | None:
    """Judge the collected results (e.g. loss accounting must reconcile).

    Called **per plugin**, once per scenario, with everything collected:
    ``data["agent"]`` (the guest agent's report), ``data["kernel"]`` (console
    reports and taint) and each plugin's :func:`lab_result_collect` mapping.
    Every answer becomes a verdict of the scenario's result: a string is a
    failed check (one line), a :class:`lab.plugin.Verdict` a check that held
    or failed.  Any failed check fails the scenario.

    :param scenario: the scenario.
    :param data: collected results, keyed by plugin name.
    :param settings: this plugin's validated settings.
    :return: a list of problems or verdicts, empty or None when there is nothing to say.

    .. versionadded:: 0.1
    """


@hookspec
def lab_result_judged(scenario: Scenario, guest: Guest, stash: Stash, data: Mapping[str, Any], passed: bool,
                      settings: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The scenario has been judged: keep the evidence of a failure, or let it go.

    Called **per plugin**, once per scenario, after every :func:`lab_result_check`, while the guest is still
    up: what only a failure is worth fetching from the guest (a trace buffer) is fetched here.  The answer
    is merged into the plugin's entry of the result's data (its :func:`lab_result_collect` mapping).  An
    exception adds a failed ``hooks`` verdict naming the plugin.

    :param scenario: the scenario.
    :param guest: its guest.
    :param stash: per-scenario state.
    :param data: collected results, as :func:`lab_result_check` saw them.
    :param passed: every check held.
    :param settings: this plugin's validated settings.
    :return: a JSON-serialisable mapping, or None.

    .. versionadded:: 0.3
    """


# ---------------------------------------------------------------------------
# Reporting.


@hookspec(firstresult=True)
def lab_report_status(result: ScenarioResult) -> str | None:
    """Give the one-word status shown for a scenario (``PASS``, ``FAIL``, ``XFAIL``...).

    ``firstresult``: the first non-None answer wins; the essential ``core``
    plugin answers last with PASS/FAIL/ERROR.

    :param result: the scenario's result record.
    :return: a short status, or None to leave the decision to others.

    .. versionadded:: 0.1
    """


@hookspec
def lab_report_write(results: Sequence[ScenarioResult], directory: Path,
                     settings: Mapping[str, Any]) -> Sequence[Path] | None:
    """Write reports for a finished run.

    Called **per plugin**, once per run, after every scenario.

    :param results: every scenario's result record, in scenario order.
    :param directory: the run's output folder (exists).
    :param settings: this plugin's validated settings.
    :return: the files written, or None.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------
# Teardown.


@hookspec
def lab_plugin_unconfigure(config: LabConfig) -> None:
    """The run is over: release what :func:`lab_plugin_configure` acquired.

    Called once per run, for every plugin, also after failures.

    :param config: the lab config.
    :return: ignored.

    .. versionadded:: 0.1
    """
