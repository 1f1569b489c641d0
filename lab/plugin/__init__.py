"""The plugin framework: manager factory, registries, hook value types.

Plugin authors need ``lab.hookimpl``, the spec classes for the registration
hooks (``EmulatorSpec``, ``ConsumerSpec``, ``FaultSpec``, ``EventSpec``) and
the objects their factories return (``lab.plugin.objects``).  See
docs/plugins.md and docs/guest-contract.md.
"""

from lab.config import Setting
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
from lab.plugin.model import (
    AGENT_REPORT,
    AGENT_STEP_ACTIONS,
    GUEST_PLUGIN_DIR,
    PLAN,
    SETTINGS,
    GuestFile,
    Invariants,
    ObjectUse,
    PhaseInfo,
    Scenario,
    ScenarioInfo,
    ScenarioResult,
    Stash,
    StashKey,
    Trigger,
    Verdict,
    agent_step,
)
from lab.plugin.registry import (
    ConsumerRegistry,
    ConsumerSpec,
    EmulatorRegistry,
    EmulatorSpec,
    EventRegistry,
    EventSpec,
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
    "SETTINGS",
    "PLAN",
    "AGENT_REPORT",
    "AGENT_STEP_ACTIONS",
    "agent_step",
    "HookCallError",
    "LabPluginManager",
    "PluginInfo",
    "call_hook",
    "get_plugin_manager",
    "parse_plugin_args",
    "Setting",
    "GuestFile",
    "Invariants",
    "ObjectUse",
    "PhaseInfo",
    "Scenario",
    "ScenarioInfo",
    "ScenarioResult",
    "Stash",
    "StashKey",
    "Trigger",
    "Verdict",
    "ConsumerRegistry",
    "ConsumerSpec",
    "EmulatorRegistry",
    "EmulatorSpec",
    "EventRegistry",
    "EventSpec",
    "FaultRegistry",
    "FaultSpec",
    "Registries",
]
