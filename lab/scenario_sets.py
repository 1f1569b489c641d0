"""Built-in scenario sets and resolving scenario names given on the command line."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .scenario import Scenario, load_scenario

__all__ = ["builtin_dir", "builtin_sets", "resolve_scenarios"]


def builtin_dir() -> Path:
    return Path(__file__).resolve().parent / "scenarios"


def builtin_sets() -> dict[str, list[Path]]:
    """Set name → scenario files (``quick`` is the default job)."""
    return {d.name: sorted(d.glob("*.toml")) for d in sorted(builtin_dir().iterdir()) if d.is_dir()}


def resolve_scenarios(names: list[str], default_set: str = "quick") -> list[Scenario]:
    """Load the named scenario files or built-ins; all are validated before anything runs."""
    sets = builtin_sets()
    if not names:
        if default_set not in sets:
            raise ConfigError(f"unknown scenario set {default_set!r} (have: {', '.join(sets)})")
        paths = sets[default_set]
    else:
        by_name = {p.stem: p for files in sets.values() for p in files}
        paths = []
        for name in names:
            if Path(name).suffix == ".toml" or Path(name).exists():
                paths.append(Path(name))
            elif name in by_name:
                paths.append(by_name[name])
            else:
                raise ConfigError(f"unknown scenario {name!r}: not a file and not a built-in "
                                  f"(built-ins: {', '.join(sorted(by_name))})")
    scenarios = [load_scenario(p) for p in paths]
    seen: set[str] = set()
    for s in scenarios:
        if s.name in seen:
            raise ConfigError(f"{s.source}: scenario name {s.name!r} is used twice in this run")
        seen.add(s.name)
    return scenarios
