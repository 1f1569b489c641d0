"""Tests import each other relatively: under tox the repository root is not on ``sys.path``.

pytest puts the first folder above a test file without ``__init__.py`` (``tests/``) on the path, so
``tests.unit...`` imports only where someone ran pytest with the root on ``PYTHONPATH``; it broke CI twice.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_test_imports_the_tests_package_by_its_absolute_name():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.relative_to(TESTS.parent)}:{node.lineno}: {n}" for n in names
                          if n == "tests" or n.startswith("tests.")]
    assert not offenders, "import relatively (from ..x import y):\n" + "\n".join(offenders)
