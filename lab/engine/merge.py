"""Merging the results of a run's shards (``cnlab merge``) into one set of records.

Each shard's records carry ``env["shard"]`` (:mod:`lab.engine.shard`): the
selection digest, the plan and its digest.  Shards belong together when they
ran the same selection, split the same way, on the same kernel with the same
module sources; anything else is refused with one line (exit status 2).  The
merged records are in selection order, each scenario once (a retried one: its
last attempt); a scenario that no shard ran (its shard's file missing, or the
shard stopped before it) gets a ``not run`` record and is named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.engine.results import final_records, read_results
from lab.errors import UsageError
from lab.plugin.model import ScenarioResult

__all__ = ["MergedShards", "merge_shards", "NOT_FINISHED"]

#: Statuses of a scenario that did not finish.
NOT_FINISHED = ("interrupted", "not run")
#: The environment keys every shard must agree on, with how a refusal names them.
_MUST_AGREE = (("module_source_hash", "module sources"), ("kernel", "kernels"))


@dataclass(frozen=True)
class MergedShards:
    """The merged run.

    :param records: one per selected scenario, in selection order.
    :param environment: what the shards agree on, plus ``shards`` (N) and ``shard_files``.
    :param not_run: scenarios no shard finished (missing, interrupted or not run), in selection order.
    :param missing_shards: indices of shards whose results were not given.
    """

    records: list[ScenarioResult]
    environment: dict
    not_run: tuple[str, ...]
    missing_shards: tuple[int, ...]

    @property
    def exit_status(self) -> int:
        """0 all passed, 1 some failed, 3 some never ran (as ``cnlab run``)."""
        if self.not_run:
            return 3
        return 0 if all(r.passed for r in self.records) else 1


def _shard_of(path: Path) -> tuple[dict, list[ScenarioResult]] | None:
    """The shard a file's records came from and the records; None for an empty file (a shard with nothing to run)."""
    if not path.is_file():
        raise UsageError(f"cnlab merge: no such results file: {path}")
    try:
        records = read_results(path)
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"cnlab merge: {path}: not a cnlab results file ({exc})") from None
    if not records and not path.read_text(encoding="utf-8").strip():
        return None
    shards = {_key(r.env.get("shard")) for r in records}
    if not records or None in shards:
        raise UsageError(f"cnlab merge: {path}: not a shard's results (run it with cnlab run --shard K/N)")
    if len(shards) > 1:
        raise UsageError(f"cnlab merge: {path}: holds records of more than one shard")
    return dict(records[0].env["shard"]), records


def _key(shard: object) -> tuple | None:
    if not isinstance(shard, dict) or not {"index", "total", "selection", "plan", "scenarios"} <= set(shard):
        return None
    return (shard["index"], shard["total"], shard["selection"], shard["plan"])


def _agree(what: str, values: dict[Path, object], label: str) -> None:
    distinct = {}
    for path, value in values.items():
        distinct.setdefault(value, path)
    if len(distinct) > 1:
        (a, path_a), (b, path_b) = list(distinct.items())[:2]
        raise UsageError(f"cnlab merge: {path_a} and {path_b} {what} ({label} {a} and {b})")


def merge_shards(paths: list[Path]) -> MergedShards:
    """Merge the JSON-lines results of shards of one run.

    :raises UsageError: a file is missing, not a shard's, or the shards do not belong together.
    """
    if not paths:
        raise UsageError("cnlab merge: no results files given")
    shards: dict[Path, dict] = {}
    records: dict[Path, list[ScenarioResult]] = {}
    for path in paths:
        if path in shards:
            raise UsageError(f"cnlab merge: {path} is given twice")
        found = _shard_of(Path(path))
        if found is not None:
            shards[path], records[path] = found
    if not shards:
        raise UsageError("cnlab merge: every results file given is empty")
    _agree("ran different scenario selections", {p: s["selection"] for p, s in shards.items()}, "selection")
    _agree("are shards of different totals", {p: s["total"] for p, s in shards.items()}, "N =")
    _agree("split the selection differently: give every shard the same --durations",
           {p: s["plan"] for p, s in shards.items()}, "plan")
    for key, label in _MUST_AGREE:
        by_path: dict[Path, str] = {}
        for path, recs in records.items():
            for record in recs:
                value = str(record.env.get(key, "?"))
                if by_path.setdefault(path, value) != value:
                    raise UsageError(f"cnlab merge: {path}: holds records of different {label}")
        _agree(f"ran different {label}", by_path, key.replace("_", " "))
    seen: dict[int, Path] = {}
    for path, shard in shards.items():
        if shard["index"] in seen:
            raise UsageError(f"cnlab merge: shard {shard['index']}/{shard['total']} is given twice: "
                             f"{seen[shard['index']]} and {path}")
        seen[shard["index"]] = path
    first = next(iter(shards.values()))
    plan = [(str(name), int(index)) for name, index in first["scenarios"]]
    total = int(first["total"])
    planned = {index for _, index in plan}
    missing_shards = tuple(k for k in range(1, total + 1) if k not in seen and k in planned)
    finished: dict[str, ScenarioResult] = {}
    for recs in records.values():
        for record in final_records(recs):
            finished[record.scenario] = record
    merged, not_run = [], []
    for name, index in plan:
        record = finished.get(name)
        if record is None:
            why = (f"shard {index}/{total} left no results" if index in missing_shards
                   else f"shard {index}/{total}'s results ({seen[index]}) do not have it")
            record = ScenarioResult(name, status="not run", error=f"no shard ran it: {why}",
                                    env={"shard": {"index": index, "total": total}})
        if record.status in NOT_FINISHED:
            not_run.append(name)
        merged.append(record)
    environment = {key: merged_env for key in ("kernel", "module_source_hash", "qemu")
                   if (merged_env := _common(records, key)) is not None}
    environment.update(shards=total, selection=first["selection"], plan=first["plan"],
                       shard_files=", ".join(f"{shard['index']}/{total}: {path}"
                                             for path, shard in sorted(shards.items(),
                                                                       key=lambda kv: kv[1]["index"])))
    return MergedShards(merged, environment, tuple(not_run), missing_shards)


def _common(records: dict[Path, list[ScenarioResult]], key: str) -> object | None:
    values = {str(r.env.get(key)) for recs in records.values() for r in recs if key in r.env}
    return values.pop() if len(values) == 1 else None
