"""The lab config (TOML), read once at the edge into frozen dataclasses.

::

    # cnlab.toml
    [lab]
    plugins = ["my_plugin", "no:faults"]    # same syntax as -p
    plugins_dirs = ["./my-plugins"]          # relative to this file
    packages = ["forkstat", "strace"]        # extra Debian packages for the guest root disk
    kernel_flavour = "debug"                 # cloud (default), debug or kcsan (lab.image.debug_kernel)

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
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    "check_value",
    "PACKAGE_NAME",
    "check_package_names",
]

#: The config file used when ``--config`` is not given and it exists in the current folder.
DEFAULT_CONFIG_NAME = "cnlab.toml"

#: A Debian package name (Policy 5.6.1): lower-case letters, digits, ``+``, ``-`` and ``.``; at least two
#: characters; starts with a letter or digit.
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")

_TYPES: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
_TOML_NAMES: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
                                tuple: "array", dict: "table"}
_LAB_KEYS = {"plugins": "array of -p style names", "plugins_dirs": "array of folders",
             "packages": "array of Debian package names for the guest",
             "kernel_flavour": "\"cloud\", \"debug\" or \"kcsan\""}
KERNEL_FLAVOURS = ("cloud", "debug", "kcsan")


@dataclass(frozen=True)
class Setting:
    """One key a plugin accepts: in its ``[plugins.<name>]`` config table, or in a scenario's table for
    one of its emulators, consumers or faults.

    :param key: the TOML key.
    :param type: ``bool``, ``int``, ``float`` (an integer is accepted), ``str`` or ``list``.
    :param default: the value when the key is absent (must itself be valid).
    :param description: one line for ``cnlab plugins`` and the docs.
    :param choices: allowed values, if the set is closed.
    :param item_type: element type for ``list`` settings.
    :param min: smallest allowed value (numbers; for lists, each element), if bounded below.
    :param max: largest allowed value (numbers; for lists, each element), if bounded above.
    :param length: for ``list`` settings, the exact number of elements, if fixed (``payload = [min, max]``).
    """

    key: str
    type: type
    default: Any
    description: str
    choices: tuple[Any, ...] = ()
    item_type: type | None = None
    min: float | None = None
    max: float | None = None
    length: int | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise TypeError(f"setting {self.key!r}: unsupported type {self.type!r} (use one of {_type_list()})")
        if not self.key.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"setting key {self.key!r} is not a bare TOML key")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"setting {self.key!r}: min {self.min} is above max {self.max}")
        check_value(lambda: f"setting {self.key!r} default", self, self.default)

    @property
    def type_name(self) -> str:
        name = _TYPES[self.type]
        if self.type is list and self.item_type is not None:
            name += f" of {_TYPES[self.item_type]}"
        return name

    @property
    def range_text(self) -> str:
        """``0..100``, ``>= 1``, ``<= 8``, one of ... or "" (for ``cnlab plugins`` and messages)."""
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        if self.min is not None and self.max is not None:
            return f"{_num(self.min)}..{_num(self.max)}"
        if self.min is not None:
            return f">= {_num(self.min)}"
        if self.max is not None:
            return f"<= {_num(self.max)}"
        return ""

    def expected(self) -> str:
        """What a valid value looks like, as a message fragment."""
        text = {"boolean": "true or false", "integer": "an integer", "number": "a number", "string": "a string",
                "array": "an array"}.get(_TYPES[self.type], _TYPES[self.type])
        if self.type is list:
            text = f"an array of {self.length} " if self.length else "an array of "
            text += {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(self.item_type,
                                                                                             "values")
        rng = self.range_text
        if rng and not self.choices:
            text += f" in {rng}"
        elif self.choices:
            text += f", {rng}"
        return text


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


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


def check_value(place: Callable[[], str], setting: Setting, value: Any) -> Any:
    """``value`` for ``setting``, normalised (lists to tuples, integers to floats for ``float``).

    :param place: where the value was written, for the message (``[plugins.x] key``, ``file: faults[0].cpu``).
    :raises ConfigError: wrong type, outside ``choices``, ``min``/``max`` or ``length``.
    """
    def fail(got: str) -> ConfigError:
        return ConfigError(f"{place()}: expected {setting.expected()}, got {got}")

    if not _is(value, setting.type):
        raise fail(f"{_TOML_NAMES.get(type(value), type(value).__name__)} {value!r}")
    items = [value]
    if setting.type is list:
        if setting.length is not None and len(value) != setting.length:
            raise fail(f"{len(value)} element(s) {value!r}")
        if setting.item_type is not None:
            for item in value:
                if not _is(item, setting.item_type):
                    raise fail(f"element {item!r}")
        items = list(value)
        value = tuple(value)
    if setting.type is float:
        value = float(value)
    if setting.choices and value not in setting.choices:
        raise fail(repr(value))
    for item in items:
        if isinstance(item, int | float) and not isinstance(item, bool):
            if (setting.min is not None and item < setting.min) or (setting.max is not None and item > setting.max):
                raise fail(repr(item) if setting.type is not list else f"element {item!r}")
    return value


def check_package_names(names: Iterable[str], where: str) -> tuple[str, ...]:
    """``names`` sorted, each once, every one a well-formed Debian package name (for the guest root disk).

    :param where: where the names were written, for the message (``cnlab.toml: [lab] packages``).
    :raises ConfigError: a name that is not a string or not a Debian package name.
    """
    out = set()
    for name in names:
        if not isinstance(name, str) or not PACKAGE_NAME.fullmatch(name):
            raise ConfigError(f"{where}: {name!r} is not a Debian package name (lower-case letters, digits, "
                              "'+', '-', '.'; at least two characters, starting with a letter or digit)")
        out.add(name)
    return tuple(sorted(out))


def validate_settings(owner: str, declared: Sequence[Setting], table: Mapping[str, Any],
                      place: Callable[[str], str] | None = None, what: str = "") -> Mapping[str, Any]:
    """Check ``table`` against ``declared``; return every key with its value (defaults filled), read-only.

    :param owner: the plugin whose table it is.
    :param place: ``place(key)`` says where a key was written (default ``[plugins.<owner>] key``).
    :param what: what takes the keys, for the unknown-key message (default ``plugin '<owner>'``).
    :raises ConfigError: an undeclared key (with a suggestion), a value of the wrong type, outside ``choices``
        or the declared range; the message names where it was written and the key.
    """
    place = place or (lambda key: f"[plugins.{owner}] {key}")
    what = what or f"plugin {owner!r}"
    by_key = {s.key: s for s in declared}
    if len(by_key) != len(declared):
        raise ConfigError(f"{what} declares a setting twice")
    values: dict[str, Any] = {}
    for key, value in table.items():
        setting = by_key.get(key)
        if setting is None:
            hint = difflib.get_close_matches(key, list(by_key), n=1)
            known = f"did you mean {hint[0]!r}?" if hint else (
                f"known keys: {', '.join(sorted(by_key))}" if by_key else "it takes no settings")
            raise ConfigError(f"{place(key)}: unknown key for {what} ({known})")
        values[key] = check_value(lambda key=key: place(key), setting, value)
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
    :param packages: extra Debian packages for the guest root disk, ``[lab] packages`` then ``--package``,
        checked names, sorted, each once (plugins add theirs with ``lab_guest_packages_add``).
    :param kernel_flavour: ``[lab] kernel_flavour``: "cloud", "debug" or "kcsan" (``--kernel-flavour`` overrides
        it).
    :param plugin_tables: raw ``[plugins.<name>]`` tables (validated by the plugin manager).
    :param env: environment variables the manager reads (``LAB_DISABLE_PLUGINS``, ``LAB_TRACE_PLUGINS``,
        ``LAB_DISABLE_PLUGIN_AUTOLOAD``); a copy, so tests can pass their own.
    """

    path: Path | None = None
    plugin_args: tuple[str, ...] = ()
    plugins_dirs: tuple[Path, ...] = ()
    packages: tuple[str, ...] = ()
    kernel_flavour: str = "cloud"
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
                env: Mapping[str, str] | None = None, packages: Iterable[str] = ()) -> LabConfig:
    """Read ``path`` (TOML) and merge the command-line plugin options and ``--package`` names.

    :raises ConfigError: unreadable file, bad TOML, unknown ``[lab]`` key or top-level table, wrong types, a
        string that is not a Debian package name in ``[lab] packages`` or ``--package``.
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
    cfg_packages = lab.get("packages", [])
    for key, value in (("plugins", cfg_args), ("plugins_dirs", cfg_dirs), ("packages", cfg_packages)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: [lab] {key}: expected an array of strings")
    flavour = lab.get("kernel_flavour", "cloud")
    if flavour not in KERNEL_FLAVOURS:
        raise ConfigError(f"{path}: [lab] kernel_flavour: {flavour!r} is not one of {', '.join(KERNEL_FLAVOURS)}")
    base = path.parent if path is not None else Path.cwd()
    tables = data.get("plugins", {})
    if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
        raise ConfigError(f"{path}: [plugins] must only hold tables: [plugins.<name>]")
    return LabConfig(
        path=path,
        plugin_args=tuple(cfg_args) + tuple(plugin_args),
        plugins_dirs=tuple((base / d) for d in cfg_dirs) + tuple(Path(d) for d in plugins_dirs),
        packages=tuple(sorted({*check_package_names(cfg_packages, f"{path}: [lab] packages"),
                               *check_package_names(packages, "--package")})),
        kernel_flavour=flavour,
        plugin_tables=_freeze_table(tables),
        env=_env_snapshot(env),
    )


def config_from_args(args: Any, env: Mapping[str, str] | None = None) -> LabConfig:
    """The config for a parsed ``cnlab`` command line (``--config``, ``-p``, ``--plugins-dir``, ``--package``).

    Without ``--config``, ``./cnlab.toml`` is read if it exists.
    """
    path = getattr(args, "config", None)
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = Path(DEFAULT_CONFIG_NAME)
    return load_config(path, plugin_args=getattr(args, "plugin_args", ()) or (),
                       plugins_dirs=getattr(args, "plugins_dir", ()) or (), env=env,
                       packages=getattr(args, "packages", ()) or ())
