"""The plugin framework: manager factory, registries, hook value types.

Plugin authors need ``lab.hookimpl`` and, for registration hooks, the spec
classes re-exported here.  See docs/plugins.md.
"""

from lab.config import Setting
from lab.plugin.driver import FAULT_PLAN, REGISTRIES, guest_setup_args, install_guest_files, run_scenario
from lab.plugin.manager import (
    BUILTIN_PLUGINS,
    ENTRY_POINT_GROUP,
    ESSENTIAL_PLUGINS,
    PER_PLUGIN_HOOKS,
    HookCallError,
    LabPluginManager,
    PluginInfo,
    call_hook,
    get_plugin_manager,
    parse_plugin_args,
)
from lab.plugin.model import GUEST_PLUGIN_DIR, GuestFile, PhaseInfo, ScenarioInfo, ScenarioResult, Stash, StashKey
from lab.plugin.registry import (
    ConsumerRegistry,
    ConsumerSpec,
    EmulatorRegistry,
    EmulatorSpec,
    FaultRegistry,
    FaultSpec,
    Registries,
)

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "ESSENTIAL_PLUGINS",
    "PER_PLUGIN_HOOKS",
    "GUEST_PLUGIN_DIR",
    "FAULT_PLAN",
    "REGISTRIES",
    "guest_setup_args",
    "install_guest_files",
    "run_scenario",
    "HookCallError",
    "LabPluginManager",
    "PluginInfo",
    "call_hook",
    "get_plugin_manager",
    "parse_plugin_args",
    "Setting",
    "GuestFile",
    "PhaseInfo",
    "ScenarioInfo",
    "ScenarioResult",
    "Stash",
    "StashKey",
    "ConsumerRegistry",
    "ConsumerSpec",
    "EmulatorRegistry",
    "EmulatorSpec",
    "FaultRegistry",
    "FaultSpec",
    "Registries",
]
