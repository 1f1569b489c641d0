"""Running one scenario through the hooks, on a guest that is already up.

:func:`run_scenario` calls, in order: ``lab_guest_files_add`` (and copies the
files in), ``lab_guest_ready``, ``lab_scenario_start``, ``lab_phase_run`` per
phase (fault wrappers included), ``lab_scenario_stop`` (always),
``lab_result_collect`` (per plugin), ``lab_result_check`` and
``lab_report_status``.  A plugin raising in any of them fails this scenario
with a :class:`~lab.plugin.manager.HookCallError` naming the plugin and the
hook, recorded in the result: the caller carries on with the next scenario.

This is the hook-calling core a scenario engine uses; guest boot, reuse and
parallelism stay with the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lab.errors import LabError
from lab.guest.files import put_files
from lab.plugin.manager import HookCallError, LabPluginManager, call_hook
from lab.plugin.model import GuestFile, PhaseInfo, ScenarioInfo, ScenarioResult, Stash, StashKey
from lab.plugin.registry import Registries

__all__ = ["REGISTRIES", "FAULT_PLAN", "guest_setup_args", "install_guest_files", "run_scenario"]

#: The manager's registries, for hooks that build emulators, consumers and faults by name.
REGISTRIES = StashKey[Registries]()
#: Faults to apply inside the guest during the load phase (JSON-ready dicts), filled by fault wrappers.
FAULT_PLAN = StashKey[list]()


def guest_setup_args(pm: LabPluginManager, shape: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(kernel command-line args, extra QEMU args)`` from ``lab_kernel_cmdline_add`` and ``lab_qemu_args_add``."""
    cmdline = tuple(str(a) for r in call_hook(pm, "lab_kernel_cmdline_add", config=pm.config, shape=shape)
                    for a in (r or ()))
    qemu = tuple(str(a) for r in call_hook(pm, "lab_qemu_args_add", config=pm.config, shape=shape) for a in (r or ()))
    return cmdline, qemu


def install_guest_files(pm: LabPluginManager, guest: Any) -> list[GuestFile]:
    """Copy every ``lab_guest_files_add`` file into ``guest``; a destination named twice is an error."""
    files = [f for group in call_hook(pm, "lab_guest_files_add", config=pm.config) for f in (group or ())]
    seen: dict[str, GuestFile] = {}
    for f in files:
        if f.dest in seen and seen[f.dest].source != f.source:
            raise LabError(f"two plugins install {f.dest}: {seen[f.dest].source} and {f.source}")
        seen[f.dest] = f
    if seen:
        put_files(guest, [(f.source, f.dest, f.mode) for f in seen.values()])
    return list(seen.values())


def _flatten(results: Sequence[Any] | None) -> list[str]:
    return [str(p) for r in results or () for p in (r or ())]


def run_scenario(pm: LabPluginManager, guest: Any, scenario: ScenarioInfo,
                 durations: dict[str, float] | None = None) -> ScenarioResult:
    """Run ``scenario`` on ``guest`` through the hooks; never raises for a plugin error (see module doc)."""
    stash = Stash()
    stash[REGISTRIES] = pm.registries
    stash[FAULT_PLAN] = []
    error: BaseException | None = None
    started = False
    try:
        install_guest_files(pm, guest)
        call_hook(pm, "lab_guest_ready", guest=guest, scenario=scenario)
        started = True
        call_hook(pm, "lab_scenario_start", scenario=scenario, guest=guest, stash=stash)
        for index, name in enumerate(scenario.phases):
            phase = PhaseInfo(name, index, (durations or {}).get(name, 0.0))
            call_hook(pm, "lab_phase_run", scenario=scenario, phase=phase, guest=guest, stash=stash)
    except LabError as exc:
        error = exc
    finally:
        if started:
            try:
                call_hook(pm, "lab_scenario_stop", scenario=scenario, guest=guest, stash=stash, error=error)
            except HookCallError as exc:
                error = error or exc
    data: dict[str, Any] = {}
    problems: list[str] = []
    try:
        collected = pm.call_per_plugin("lab_result_collect",
                                       lambda _name: {"scenario": scenario, "guest": guest, "stash": stash})
        data = {name: results[0] for name, results in collected.items() if results and results[0] is not None}
        problems = _flatten(call_hook(pm, "lab_result_check", scenario=scenario, data=data))
    except HookCallError as exc:
        error = error or exc
    return ScenarioResult(scenario, passed=error is None and not problems, data=data, problems=tuple(problems),
                          error=str(error).partition("\n")[0] if error else "")
