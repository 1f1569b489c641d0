"""``cnlab run --shard K/N`` (which scenarios this shard runs) and ``cnlab merge`` (the shards as one run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from lab.engine.merge import merge_shards
from lab.engine.results import ResultsWriter
from lab.engine.shard import ShardSpec, load_durations, shard_environment, split_scenarios
from lab.engine.timings import expected_durations
from lab.plugin.model import Scenario
from lab.report.html import write_html
from lab.report.junit import write_junit
from lab.report.summary import print_summary

__all__ = ["select_shard", "merge_command"]


def select_shard(spec: ShardSpec, scenarios: list[Scenario], cache: Path,
                 durations: Path | None = None) -> tuple[list[Scenario], dict]:
    """This shard's scenarios and the ``env`` entry its records carry.

    :param durations: expected durations from this file instead of the cache's remembered ones.
    """
    expected = load_durations(durations) if durations is not None else expected_durations(cache)
    shards = split_scenarios(scenarios, spec.total, expected)
    return shards[spec.index - 1], {"shard": shard_environment(spec, scenarios, shards)}


def merge_command(paths: list[Path], out_dir: Path, json_path: Path | None, junit: Path | None,
                  report: Path | None, out: TextIO) -> int:
    """Merge shard results; write one results file, JUnit, HTML and ``durations.json``; print the summary.

    :returns: 0 all passed, 1 some failed, 3 some scenario no shard ran.
    :raises UsageError: the shards do not belong together (exit status 2).
    """
    merged = merge_shards(paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = json_path or out_dir / "results.jsonl"
    junit = junit or out_dir / "junit.xml"
    report = report or out_dir / "report.html"
    json_path.unlink(missing_ok=True)
    with ResultsWriter(json_path) as writer:
        for record in merged.records:
            writer.write(record.to_json())
    write_junit(junit, merged.records, merged.environment)
    write_html(merged.records, report)
    durations = {r.scenario: r.duration for r in merged.records if r.status in ("passed", "failed") and r.duration}
    (out_dir / "durations.json").write_text(json.dumps(durations, indent=1, sort_keys=True) + "\n")
    print_summary(merged.records, out)
    total = merged.environment["shards"]
    print(f"merged {len(paths)} of {total} shards: {len(merged.records)} scenarios; results: {json_path}, {junit}, "
          f"{report}, {out_dir / 'durations.json'}", file=out)
    if merged.missing_shards:
        print("cnlab merge: no results from shard(s) " + ", ".join(f"{k}/{total}" for k in merged.missing_shards),
              file=out)
    if merged.not_run:
        print(f"cnlab merge: no shard ran: {', '.join(merged.not_run)}", file=out)
    return merged.exit_status
