"""The plugin manager: built from a factory, never a global.

:func:`get_plugin_manager` does, in order:

1. add the hook specs (:mod:`lab.hookspecs`);
2. install hook-call tracing if ``LAB_TRACE_PLUGINS=1``;
3. apply the block list (``LAB_DISABLE_PLUGINS``, ``-p no:NAME``); blocking an
   ``ESSENTIAL_PLUGINS`` member is an error;
4. register ``ESSENTIAL_PLUGINS`` then ``BUILTIN_PLUGINS`` (``cnlab_plugins.*``
   modules, named by their last component, through the same path as every
   other plugin);
5. load the ``cnlab`` entry-point group (skipped with
   ``LAB_DISABLE_PLUGIN_AUTOLOAD=1``: then only ``-p NAME`` loads one);
6. load every ``*.py`` in each plugins directory by path, named by its stem;
7. load ``-p NAME`` plugins (entry point name, then importable module);
8. ``check_pending()``: a misspelt or unmarked hook is a ``PluginError`` naming
   the plugin and the hook;
9. settings (``lab_settings_declare``, validation of ``[plugins.<name>]``),
   ``lab_plugin_configure`` and the four registration hooks.

A hook that raises becomes a :class:`HookCallError` (a ``PluginError``) naming
the plugin and the hook: :func:`call_hook` for broadcasts,
:meth:`LabPluginManager.call_per_plugin` for per-plugin hooks.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import pluggy

from lab import hookspecs
from lab.config import LabConfig, Setting, validate_settings
from lab.errors import ConfigError, PluginError
from lab.plugin.registry import Registries

__all__ = [
    "ENTRY_POINT_GROUP",
    "ESSENTIAL_PLUGINS",
    "BUILTIN_PLUGINS",
    "PER_PLUGIN_HOOKS",
    "DIRECTORY_MODULE_PREFIX",
    "PluginInfo",
    "HookCallError",
    "LabPluginManager",
    "get_plugin_manager",
    "call_hook",
    "parse_plugin_args",
]

ENTRY_POINT_GROUP = "cnlab"
#: Cannot be blocked: the fallbacks every run needs.
ESSENTIAL_PLUGINS: tuple[str, ...] = ("cnlab_plugins.core", "cnlab_plugins.checks")
#: Built-in plugins, loaded exactly like third-party ones; block with ``-p no:<last component>``.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "cnlab_plugins.emulators",
    "cnlab_plugins.cn_proc",
    "cnlab_plugins.consumers",
    "cnlab_plugins.faults",
    "cnlab_plugins.linkfaults",
    "cnlab_plugins.failinject",
    "cnlab_plugins.vmcore",
    "cnlab_plugins.flightrec",
)
#: Hooks the manager calls once per plugin, with that plugin's settings (it must know whose answer is whose).
PER_PLUGIN_HOOKS: tuple[str, ...] = (
    "lab_settings_declare",
    "lab_plugin_configure",
    "lab_emulators_register",
    "lab_consumers_register",
    "lab_faults_register",
    "lab_events_register",
    "lab_guest_ready",
    "lab_scenario_start",
    "lab_scenario_stop",
    "lab_result_collect",
    "lab_result_check",
    "lab_result_judged",
    "lab_report_write",
)
#: ``sys.modules`` prefix of plugins loaded by path from a plugins directory.
DIRECTORY_MODULE_PREFIX = "cnlab_dirplugin_"

_TRUE = {"1", "yes", "true", "on"}


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from.

    :param name: the plugin's name (``-p no:NAME``, ``[plugins.NAME]``).
    :param source: ``built-in``, ``entry point``, ``directory`` or ``-p``.
    :param origin: module name, distribution and version, or file path.
    :param essential: cannot be blocked.
    :param blocked: known but blocked (not registered).
    """

    name: str
    source: str
    origin: str
    essential: bool = False
    blocked: bool = False


class HookCallError(PluginError):
    """A plugin raised inside a hook.

    :ivar plugin: the plugin's name (``"?"`` if no implementation was on the traceback).
    :ivar hook: the hook's name.
    :ivar original: the exception the plugin raised (also ``__cause__``).
    """

    def __init__(self, plugin: str, hook: str, original: BaseException) -> None:
        self.plugin = plugin
        self.hook = hook
        self.original = original
        detail = str(original).partition("\n")[0]
        super().__init__(f"plugin {plugin!r} failed in hook {hook}: {type(original).__name__}"
                         + (f": {detail}" if detail else ""))


def _short_name(module_name: str) -> str:
    return module_name.rpartition(".")[2]


def parse_plugin_args(args: Iterable[str]) -> tuple[dict[str, bool], list[str]]:
    """``-p`` arguments in order: ``({name: blocked}, [names to load])``; the last word on a name wins.

    :raises PluginError: an empty name.
    """
    state: dict[str, bool] = {}
    wanted: list[str] = []
    for arg in args:
        arg = arg.strip()
        blocked = arg.startswith("no:")
        name = arg[3:] if blocked else arg
        if not name:
            raise PluginError(f"-p {arg!r}: empty plugin name")
        state[name] = blocked
        if blocked:
            wanted = [w for w in wanted if w != name]
        elif name not in wanted:
            wanted.append(name)
    return state, wanted


def _culprit(caller: pluggy.HookCaller, tb: TracebackType | None) -> str:
    """The plugin whose implementation is innermost on the traceback."""
    codes = {impl.function.__code__: impl.plugin_name for impl in caller.get_hookimpls()}
    found = "?"
    while tb is not None:
        name = codes.get(tb.tb_frame.f_code)
        if name is not None:
            found = name
        tb = tb.tb_next
    return found


def call_hook(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> Any:
    """Call hook ``name`` on every plugin (a normal pluggy call, wrappers included).

    :raises HookCallError: an implementation raised; names the plugin and the hook.
        Errors that are already a ``HookCallError`` pass through unchanged.
    """
    caller = getattr(pm.hook, name)
    try:
        return caller(**kwargs)
    except HookCallError:
        raise
    except Exception as exc:
        raise HookCallError(_culprit(caller, exc.__traceback__), name, exc) from exc


class LabPluginManager(pluggy.PluginManager):
    """pluggy's manager plus provenance, settings and registries; made by :func:`get_plugin_manager`."""

    def __init__(self, config: LabConfig) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.config = config
        self.infos: dict[str, PluginInfo] = {}
        self.registries = Registries()
        self.settings: dict[str, Mapping[str, Any]] = {}
        self.declared: dict[str, tuple[Setting, ...]] = {}
        self._unmarked: list[tuple[str, str]] = []
        self._spec_names: frozenset[str] = frozenset()
        self._parsing: str = ""

    # -- registration ------------------------------------------------------

    def add_hookspecs(self, module_or_class: object) -> None:
        super().add_hookspecs(module_or_class)
        self._spec_names = frozenset(n for n in getattr(module_or_class, "__all__", ()) if n.startswith("lab_"))

    def parse_hookimpl_opts(self, plugin: object, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("lab_") and callable(getattr(plugin, name, None)):
            self._unmarked.append((self._parsing, name))
        return opts

    def add_plugin(self, plugin: object, name: str, source: str, origin: str, essential: bool = False) -> bool:
        """Register ``plugin`` as ``name`` and record where it came from; False if ``name`` is blocked.

        :raises PluginError: the name is taken, or an implementation does not match its spec.
        """
        if self.is_blocked(name):
            self.infos.setdefault(name, PluginInfo(name, source, origin, essential, blocked=True))
            return False
        if self.has_plugin(name):
            old = self.infos.get(name)
            where = f" ({old.source}: {old.origin})" if old else ""
            raise PluginError(f"plugin name {name!r} from {source} {origin} is already taken{where}")
        self._parsing = name
        try:
            self.register(plugin, name)
        except pluggy.PluginValidationError as exc:
            text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise PluginError(f"plugin {name!r} ({source}: {origin}): {text}") from None
        except ValueError as exc:
            raise PluginError(f"plugin {name!r} ({source}: {origin}): {exc}") from None
        finally:
            self._parsing = ""
        self.infos[name] = PluginInfo(name, source, origin, essential)
        return True

    def import_plugin(self, module_name: str, source: str = "built-in", name: str | None = None,
                      essential: bool = False) -> bool:
        """Import ``module_name`` and register it (as its last name component unless ``name`` is given)."""
        name = name or _short_name(module_name)
        if self.is_blocked(name):
            self.infos.setdefault(name, PluginInfo(name, source, module_name, essential, blocked=True))
            return False
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if exc.name == module_name:
                raise PluginError(f"no plugin, module or entry point named {module_name!r}") from None
            raise PluginError(f"plugin {name!r}: importing {module_name} failed: {exc}") from exc
        except Exception as exc:
            raise PluginError(f"plugin {name!r}: importing {module_name} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        return self.add_plugin(module, name, source, module_name, essential)

    def _entry_points(self) -> list[importlib.metadata.EntryPoint]:
        return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)

    def load_entry_point(self, ep: importlib.metadata.EntryPoint) -> bool:
        dist = ep.dist
        origin = f"{dist.name} {dist.version}" if dist is not None else ep.value
        if self.is_blocked(ep.name):
            self.infos.setdefault(ep.name, PluginInfo(ep.name, "entry point", origin, blocked=True))
            return False
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin {ep.name!r} (entry point {ep.value} of {origin}) failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc
        return self.add_plugin(plugin, ep.name, "entry point", origin)

    def load_entry_points(self) -> None:
        """Load every plugin of the ``cnlab`` entry-point group, by entry-point name."""
        for ep in self._entry_points():
            self.load_entry_point(ep)

    def load_directory(self, directory: Path) -> None:
        """Load each ``*.py`` of ``directory`` (not ``_*``) by path, named by its file stem."""
        if not directory.is_dir():
            raise PluginError(f"plugins directory {directory}: not a directory")
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            name = path.stem
            if self.is_blocked(name):
                self.infos.setdefault(name, PluginInfo(name, "directory", str(path), blocked=True))
                continue
            if self.has_plugin(name):
                old = self.infos[name]
                raise PluginError(f"plugin {path}: name {name!r} is already taken ({old.source}: {old.origin})")
            module_name = DIRECTORY_MODULE_PREFIX + name
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[module_name]
                raise PluginError(f"plugin {name!r} ({path}) failed to import: {type(exc).__name__}: {exc}") \
                    from exc
            self.add_plugin(module, name, "directory", str(path))

    def consider_pluginarg(self, name: str) -> None:
        """``-p NAME``: nothing if loaded; else an entry point of that name, else a module of that name."""
        if self.has_plugin(name) or self.has_plugin(_short_name(name)):
            return
        for ep in self._entry_points():
            if ep.name == name:
                self.load_entry_point(ep)
                return
        self.import_plugin(name, source="-p", name=name)

    # -- validation --------------------------------------------------------

    def check_pending(self) -> None:
        """Every implementation must match a spec and every ``lab_*`` hook-like function must be marked.

        :raises PluginError: naming the plugin and the hook (with a suggestion for a misspelling).
        """
        problems: list[str] = []
        for plugin_name, fname in self._unmarked:
            if fname in self._spec_names:
                problems.append(f"plugin {plugin_name!r}: function {fname} is not marked with @lab.hookimpl, "
                                "so it would never be called")
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            for caller in self.get_hookcallers(plugin) or ():
                if caller.has_spec():
                    continue
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and not impl.optionalhook:
                        hint = difflib.get_close_matches(caller.name, sorted(self._spec_names), n=1)
                        problems.append(f"plugin {name!r}: unknown hook {caller.name}"
                                        + (f" (did you mean {hint[0]}?)" if hint else ""))
        if problems:
            raise PluginError("; ".join(problems))

    # -- calling -----------------------------------------------------------

    def plugin_order(self, hook_name: str) -> list[tuple[str, object]]:
        """Plugins implementing ``hook_name`` in load order (built-ins first, then entry points, directories,
        ``-p``): per-plugin hooks run in this order, so a late plugin cannot take a built-in's name."""
        caller = getattr(self.hook, hook_name)
        impls = {impl.plugin_name: impl.plugin for impl in caller.get_hookimpls()}
        return [(name, impls[name]) for name in self.infos if name in impls]

    def call_per_plugin(self, hook_name: str,
                        kwargs_for: Callable[[str], Mapping[str, Any]] | None = None,
                        errors: list[HookCallError] | None = None) -> dict[str, list[Any]]:
        """Call ``hook_name`` once for each implementing plugin, alone; ``{plugin name: results}``.

        :param kwargs_for: the keyword arguments for a given plugin name.
        :param errors: when given, a plugin that raises is recorded here and the others are still called.
        :raises HookCallError: naming the plugin and the hook (unless ``errors`` collects them).
        """
        out: dict[str, list[Any]] = {}
        everyone = [p for _, p in self.list_name_plugin() if p is not None]
        for name, plugin in self.plugin_order(hook_name):
            caller = self.subset_hook_caller(hook_name, remove_plugins=[p for p in everyone if p is not plugin])
            kwargs = dict(kwargs_for(name)) if kwargs_for else {}
            try:
                out[name] = caller(**kwargs)
            except Exception as exc:
                error = exc if isinstance(exc, HookCallError) else HookCallError(name, hook_name, exc)
                if errors is None:
                    raise error from exc
                errors.append(error)
        return out

    def call(self, hook_name: str, **kwargs: Any) -> Any:
        """:func:`call_hook` on this manager."""
        return call_hook(self, hook_name, **kwargs)

    def call_each(self, hook_name: str, errors: list[HookCallError] | None = None,
                  **kwargs: Any) -> dict[str, list[Any]]:
        """Call a per-plugin hook (:data:`PER_PLUGIN_HOOKS`) on each plugin alone, adding its ``settings``.

        :param errors: when given, a plugin that raises is recorded here and the others are still called.
        :raises HookCallError: naming the plugin and the hook (unless ``errors`` collects them).
        """
        return self.call_per_plugin(hook_name, lambda name: dict(kwargs, settings=self.settings.get(name, {})),
                                    errors)

    # -- set-up --------------------------------------------------------------

    def setup_plugins(self) -> None:
        """Settings declaration and validation, ``lab_plugin_configure``, then the registration hooks."""
        declared = self.call_per_plugin("lab_settings_declare")
        for name, results in declared.items():
            settings: list[Setting] = []
            for result in results:
                for item in result or ():
                    if not isinstance(item, Setting):
                        raise PluginError(f"plugin {name!r}: lab_settings_declare returned {item!r}, "
                                          "not a lab.config.Setting")
                    settings.append(item)
            self.declared[name] = tuple(settings)
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            self.settings[name] = validate_settings(name, self.declared.get(name, ()),
                                                    self.config.plugin_table(name))
        for table in self.config.plugin_tables:
            if not self.has_plugin(table) and not self.is_blocked(table):
                loaded = ", ".join(sorted(n for n, _ in self.list_name_plugin()))
                raise ConfigError(f"[plugins.{table}]: no plugin named {table!r} is loaded (loaded: {loaded})")
        self.call_per_plugin("lab_plugin_configure",
                             lambda name: {"config": self.config, "settings": self.settings[name]})
        self.call_per_plugin("lab_emulators_register",
                             lambda name: {"registry": self.registries.emulators.for_plugin(name),
                                           "settings": self.settings[name]})
        self.call_per_plugin("lab_consumers_register",
                             lambda name: {"registry": self.registries.consumers.for_plugin(name),
                                           "settings": self.settings[name]})
        self.call_per_plugin("lab_faults_register",
                             lambda name: {"registry": self.registries.faults.for_plugin(name),
                                           "settings": self.settings[name]})
        self.call_per_plugin("lab_events_register",
                             lambda name: {"registry": self.registries.events.for_plugin(name),
                                           "settings": self.settings[name]})

    def unconfigure(self) -> None:
        """``lab_plugin_unconfigure`` for every plugin."""
        self.call("lab_plugin_unconfigure", config=self.config)

    # -- introspection -------------------------------------------------------

    def hooks_of(self, name: str) -> list[str]:
        """Names of the hooks plugin ``name`` implements, sorted."""
        plugin = self.get_plugin(name)
        if plugin is None:
            return []
        return sorted(c.name for c in self.get_hookcallers(plugin) or ())

    def kind_of(self, name: str) -> str:
        """What a plugin provides: ``emulator``, ``consumer``, ``fault``, ``event`` (joined by ``+``) or ``hooks``."""
        kinds = [reg.kind for reg in (self.registries.emulators, self.registries.consumers, self.registries.faults,
                                      self.registries.events)
                 if any(spec.plugin == name for spec in reg)]
        return "+".join(kinds) or "hooks"


def _install_tracing(pm: LabPluginManager, stream: TextIO) -> None:
    pm.trace.root.setwriter(stream.write)
    pm.enable_tracing()


def get_plugin_manager(config: LabConfig | None = None, *, setup: bool = True,
                       trace_stream: TextIO | None = None) -> LabPluginManager:
    """Build a ready plugin manager for ``config`` (see the module docstring for the order).

    :param setup: also run settings, configure and registration hooks (:meth:`LabPluginManager.setup_plugins`).
    :param trace_stream: where ``LAB_TRACE_PLUGINS=1`` writes (default stderr).
    :raises PluginError: unknown ``-p`` name, blocked essential plugin, load failure, misspelt hook,
        a hook that raised.
    :raises ConfigError: a bad ``[plugins.<name>]`` table.
    """
    config = config or LabConfig()
    pm = LabPluginManager(config)
    pm.add_hookspecs(hookspecs)
    if config.env.get("LAB_TRACE_PLUGINS", "").lower() in _TRUE:
        _install_tracing(pm, trace_stream or sys.stderr)

    essential = {_short_name(m) for m in ESSENTIAL_PLUGINS}
    env_blocked = [n for n in config.env.get("LAB_DISABLE_PLUGINS", "").replace(",", " ").split() if n]
    state, wanted = parse_plugin_args([f"no:{n}" for n in env_blocked] + list(config.plugin_args))
    explicit_blocks: list[str] = []
    for name, blocked in state.items():
        if not blocked:
            continue
        short = _short_name(name) if name.startswith("cnlab_plugins.") else name
        if short in essential:
            raise PluginError(f"plugin {short!r} is essential and cannot be blocked")
        pm.set_blocked(short)
        if any(a.strip() == f"no:{name}" for a in config.plugin_args):
            explicit_blocks.append(short)

    for module_name in ESSENTIAL_PLUGINS:
        pm.import_plugin(module_name, essential=True)
    for module_name in BUILTIN_PLUGINS:
        pm.import_plugin(module_name)
    if config.env.get("LAB_DISABLE_PLUGIN_AUTOLOAD", "").lower() not in _TRUE:
        pm.load_entry_points()
    for directory in config.plugins_dirs:
        pm.load_directory(Path(directory))
    for name in wanted:
        pm.consider_pluginarg(name)

    known = set(pm.infos) | {ep.name for ep in pm._entry_points()}
    for name in explicit_blocks:
        if name not in known:
            raise PluginError(f"-p no:{name}: no plugin named {name!r} (known: {', '.join(sorted(known))})")
    pm.check_pending()
    if setup:
        pm.setup_plugins()
    return pm
