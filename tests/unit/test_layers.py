"""The layout shows the architecture: lab/ is grouped by layer and imports point down.

Layers, lowest first: the base modules in ``lab/`` itself (errors, deadlines,
commands, config, the kernel ABI, the hook specs), ``host`` (packages,
processes, cache), ``image`` (kernel, disks, module build), ``guest`` (one
QEMU guest and the lab that makes them), ``plugin`` (the plugin framework),
``engine`` (scenarios and running them), ``report`` (summary, JUnit, HTML),
``bench`` (benchmarks) and the front ends (``cli``, the pytest plugin).  A
module may import from its own layer and the ones below it; imports under
``if TYPE_CHECKING:`` (annotations only) are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "lab"
LAYERS = ["base", "host", "image", "guest", "plugin", "engine", "report", "bench", "front"]
FOLDERS = {"host": "host", "image": "image", "guest": "guest", "plugin": "plugin", "engine": "engine",
           "report": "report", "bench": "bench", "cli": "front"}
FRONT_MODULES = {"pytest_plugin", "__main__"}


def layer_of(module: str) -> str:
    """The layer of a dotted ``lab`` module name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "base"
    if parts[1] in FOLDERS:
        return FOLDERS[parts[1]]
    if parts[1] in FRONT_MODULES:
        return "front"
    return "base"


def _runtime_imports(tree: ast.Module) -> list[tuple[int, str]]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("lab"):
            if node.module == "lab":
                found += [(node.lineno, f"lab.{a.name}") for a in node.names if a.name != "hookimpl"]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("lab.")]
    return found


def _module_name(path: Path) -> str:
    rel = path.relative_to(LAB.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_every_import_points_down_the_layers():
    wrong = []
    for path in sorted(LAB.rglob("*.py")):
        if "guestside" in path.parts:
            continue  # programs that run in a guest: they import kabi from their own folder
        importer = _module_name(path)
        rank = LAYERS.index(layer_of(importer))
        for line, imported in _runtime_imports(ast.parse(path.read_text())):
            if LAYERS.index(layer_of(imported)) > rank:
                wrong.append(f"{path.relative_to(LAB.parent)}:{line}: {importer} ({layer_of(importer)}) imports "
                             f"{imported} ({layer_of(imported)})")
    assert not wrong, "imports pointing up the layers:\n" + "\n".join(wrong)


def test_every_folder_of_lab_is_a_known_layer():
    folders = {p.name for p in LAB.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders <= set(FOLDERS) | {"guestside"}, folders - set(FOLDERS)


def test_layer_check_sees_a_wrong_import(tmp_path):
    tree = ast.parse("from lab.engine.run import run_scenarios\nif TYPE_CHECKING:\n    from lab.cli.main import x\n")
    imports = _runtime_imports(tree)
    assert imports == [(1, "lab.engine.run")]
    assert LAYERS.index(layer_of("lab.engine.run")) > LAYERS.index(layer_of("lab.guest.machine"))
