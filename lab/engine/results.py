"""Scenario results as JSON lines, written as they happen.

Every finished scenario is appended to the JSON-lines file and fsync'ed at
once, so a run that is killed keeps everything that finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lab.plugin.model import ScenarioResult

__all__ = ["ResultsWriter", "read_results", "final_records"]


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


def read_results(path: Path) -> list[ScenarioResult]:
    """Records from a JSON-lines file, every attempt in file order; a torn line (killed writer) is skipped.

    :raises ValueError: a record of a newer schema than this cnlab reads.
    """
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        records.append(ScenarioResult.from_json(data))
    return records


def final_records(records: list[ScenarioResult]) -> list[ScenarioResult]:
    """The last attempt of each scenario, in first-seen order (a retried scenario's first attempt drops out)."""
    last: dict[str, ScenarioResult] = {}
    for record in records:
        last[record.scenario] = record
    return list(last.values())
