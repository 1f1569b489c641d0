"""Scenario results as JSON lines, written as they happen.

Every finished scenario is appended to the JSON-lines file and fsync'ed at
once, so a run that is killed keeps everything that finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["ResultsWriter", "read_results"]


class ResultsWriter:
    """Appends one JSON object per line, durably."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_results(path: Path) -> list[dict]:
    """Records from a JSON-lines file; a torn last line (killed writer) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
