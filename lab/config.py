"""The lab config (TOML), read once at the edge into frozen dataclasses.

::

    # cnlab.toml
    [lab]
    plugins = ["my_plugin", "no:faults"]    # same syntax as -p
    plugins_dirs = ["./my-plugins"]          # relative to this file

    [plugins.emulators]                      # one table per plugin, by plugin name
    rate_scale = 0.5

Every plugin declares its keys (:class:`Setting`: key, type, default,
description) through the ``lab_settings_declare`` hook; :func:`validate_settings`
checks a ``[plugins.<name>]`` table against them.  A wrong key or type is a
:class:`~lab.errors.ConfigError` naming the plugin and the key.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lab.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "Setting",
    "LabConfig",
    "load_config",
    "config_from_args",
    "validate_settings",
]

#: The config file used when ``--config`` is not given and it exists in the current folder.
DEFAULT_CONFIG_NAME = "cnlab.toml"

_TYPES: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
_LAB_KEYS = {"plugins": "array of -p style names", "plugins_dirs": "array of folders"}


@dataclass(frozen=True)
class Setting:
    """One key of a plugin's ``[plugins.<name>]`` table.

    :param key: the TOML key.
    :param type: ``bool``, ``int``, ``float`` (an integer is accepted), ``str`` or ``list``.
    :param default: the value when the key is absent (must itself be valid).
    :param description: one line for ``cnlab plugins`` and the docs.
    :param choices: allowed values, if the set is closed.
    :param item_type: element type for ``list`` settings.
    """

    key: str
    type: type
    default: Any
    description: str
    choices: tuple[Any, ...] = ()
    item_type: type | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise TypeError(f"setting {self.key!r}: unsupported type {self.type!r} (use one of {_type_list()})")
        if not self.key.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"setting key {self.key!r} is not a bare TOML key")
        _check_value("<declaration>", self, self.default)

    @property
    def type_name(self) -> str:
        name = _TYPES[self.type]
        if self.type is list and self.item_type is not None:
            name += f" of {_TYPES[self.item_type]}"
        return name


def _type_list() -> str:
    return ", ".join(t.__name__ for t in _TYPES)


def _is(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_value(owner: str, setting: Setting, value: Any) -> Any:
    where = f"[plugins.{owner}] {setting.key}"
    if not _is(value, setting.type):
        raise ConfigError(f"{where}: expected {setting.type_name}, got {type(value).__name__} {value!r}")
    if setting.type is list:
        if setting.item_type is not None:
            for item in value:
                if not _is(item, setting.item_type):
                    raise ConfigError(f"{where}: expected {setting.type_name}, got element {item!r}")
        value = tuple(value)
    if setting.type is float:
        value = float(value)
    if setting.choices and value not in setting.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, setting.choices))}")
    return value


def validate_settings(owner: str, declared: Sequence[Setting], table: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check ``table`` against ``declared``; return every key with its value (defaults filled), read-only.

    :raises ConfigError: an undeclared key, a value of the wrong type or outside ``choices``;
        the message names ``[plugins.<owner>]`` and the key.
    """
    by_key = {s.key: s for s in declared}
    if len(by_key) != len(declared):
        raise ConfigError(f"plugin {owner!r} declares a setting twice")
    values: dict[str, Any] = {}
    for key, value in table.items():
        setting = by_key.get(key)
        if setting is None:
            hint = difflib.get_close_matches(key, list(by_key), n=1)
            known = f"did you mean {hint[0]!r}?" if hint else (
                f"known keys: {', '.join(sorted(by_key))}" if by_key else "it takes no settings")
            raise ConfigError(f"[plugins.{owner}] {key}: unknown key for plugin {owner!r} ({known})")
        values[key] = _check_value(owner, setting, value)
    for setting in declared:
        values.setdefault(setting.key, tuple(setting.default) if setting.type is list else setting.default)
    return MappingProxyType(values)


def _freeze_table(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze_table(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze_table(v) for v in value)
    return value


@dataclass(frozen=True)
class LabConfig:
    """Everything the plugin manager needs, read once.

    :param path: the TOML file read, or None.
    :param plugin_args: ``-p`` arguments, config ``[lab] plugins`` first, then the command line.
    :param plugins_dirs: folders of one-file plugins, config first, then ``--plugins-dir``.
    :param plugin_tables: raw ``[plugins.<name>]`` tables (validated by the plugin manager).
    :param env: environment variables the manager reads (``LAB_DISABLE_PLUGINS``, ``LAB_TRACE_PLUGINS``,
        ``LAB_DISABLE_PLUGIN_AUTOLOAD``); a copy, so tests can pass their own.
    """

    path: Path | None = None
    plugin_args: tuple[str, ...] = ()
    plugins_dirs: tuple[Path, ...] = ()
    plugin_tables: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def plugin_table(self, name: str) -> Mapping[str, Any]:
        """The raw ``[plugins.<name>]`` table ({} if absent)."""
        return self.plugin_tables.get(name, MappingProxyType({}))


def _env_snapshot(env: Mapping[str, str] | None) -> Mapping[str, str]:
    source = os.environ if env is None else env
    keys = ("LAB_DISABLE_PLUGINS", "LAB_TRACE_PLUGINS", "LAB_DISABLE_PLUGIN_AUTOLOAD")
    return MappingProxyType({k: source[k] for k in keys if k in source})


def load_config(path: Path | None = None, *, plugin_args: Iterable[str] = (), plugins_dirs: Iterable[Path] = (),
                env: Mapping[str, str] | None = None) -> LabConfig:
    """Read ``path`` (TOML) and merge the command-line plugin options.

    :raises ConfigError: unreadable file, bad TOML, unknown ``[lab]`` key or top-level table, wrong types.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the lab config: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for key in data:
        if key not in ("lab", "plugins"):
            raise ConfigError(f"{path}: unknown top-level table {key!r} (expected [lab] and [plugins.<name>])")
    lab = data.get("lab", {})
    if not isinstance(lab, dict):
        raise ConfigError(f"{path}: 'lab' must be a table")
    for key in lab:
        if key not in _LAB_KEYS:
            raise ConfigError(f"{path}: [lab] {key}: unknown key (known: {', '.join(sorted(_LAB_KEYS))})")
    cfg_args = lab.get("plugins", [])
    cfg_dirs = lab.get("plugins_dirs", [])
    for key, value in (("plugins", cfg_args), ("plugins_dirs", cfg_dirs)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: [lab] {key}: expected an array of strings")
    base = path.parent if path is not None else Path.cwd()
    tables = data.get("plugins", {})
    if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
        raise ConfigError(f"{path}: [plugins] must only hold tables: [plugins.<name>]")
    return LabConfig(
        path=path,
        plugin_args=tuple(cfg_args) + tuple(plugin_args),
        plugins_dirs=tuple((base / d) for d in cfg_dirs) + tuple(Path(d) for d in plugins_dirs),
        plugin_tables=_freeze_table(tables),
        env=_env_snapshot(env),
    )


def config_from_args(args: Any, env: Mapping[str, str] | None = None) -> LabConfig:
    """The config for a parsed ``cnlab`` command line (``--config``, ``-p``, ``--plugins-dir``).

    Without ``--config``, ``./cnlab.toml`` is read if it exists.
    """
    path = getattr(args, "config", None)
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = Path(DEFAULT_CONFIG_NAME)
    return load_config(path, plugin_args=getattr(args, "plugin_args", ()) or (),
                       plugins_dirs=getattr(args, "plugins_dir", ()) or (), env=env)
