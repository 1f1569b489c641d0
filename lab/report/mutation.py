"""The table of a ``cnlab mutate`` run: JSON and a self-contained HTML page (no scripts, no external files)."""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

__all__ = ["mutation_table", "write_mutation_table"]

_ORDER = ("survived", "killed", "error", "built", "unchanged", "warning", "compile-error")


def mutation_table(records: list[dict], suite: str | None, command: str,
                   equivalents: dict[str, str] | None = None, left: list[str] | tuple[str, ...] = ()) -> dict:
    """The table: counts by status and operator, the score (killed / (killed + survived)), every mutant, and
    the ids of the selected mutants a ``--budget`` ``left`` for the next run.

    A survivor listed in ``equivalents`` (id -> reason, :func:`lab.image.mutants.load_equivalents`) keeps
    its status and gets the reason as ``equivalent``; the score also says how many of the non-equivalent
    mutants were killed (``percent_non_equivalent``)."""
    records = [_with_listing(r, equivalents or {}) for r in records]
    counts = Counter(r["status"] for r in records)
    killed, survived = counts.get("killed", 0), counts.get("survived", 0)
    equivalent = sum(1 for r in records if "equivalent" in r)
    by_op: dict[str, Counter] = {}
    for r in records:
        by_op.setdefault(r["operator"], Counter())[r["status"]] += 1
    rows = sorted(records, key=lambda r: (_ORDER.index(r["status"]) if r["status"] in _ORDER else 99,
                                          r["file"], r["line"], r["id"]))
    return {"schema": 1, "suite": suite, "command": command, "counts": dict(sorted(counts.items())),
            "score": {"killed": killed, "survived": survived, "equivalent": equivalent,
                      "percent": _percent(killed, killed + survived),
                      "percent_non_equivalent": _percent(killed, killed + survived - equivalent)},
            "by_operator": {op: dict(sorted(c.items())) for op, c in sorted(by_op.items())},
            "mutants": rows, "left": list(left)}


def _with_listing(record: dict, equivalents: dict[str, str]) -> dict:
    """``record`` with its listed reason: ``equivalent`` on a survivor, ``listed_equivalent`` on a kill (which
    disproves the listing: the table says so beside the mutant)."""
    reason = equivalents.get(record["id"])
    key = {"survived": "equivalent", "killed": "listed_equivalent"}.get(record["status"])
    return {**record, key: reason} if reason is not None and key else record


def _percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def write_mutation_table(table: dict, json_path: Path, html_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    html_path.write_text(_html(table))


def _html(table: dict) -> str:
    e = html.escape
    score = table["score"]
    suite = table["suite"] or "none (build only)"
    head = (f"<p>suite <code>{e(suite)}</code>; command <code>{e(table['command'])}</code></p>"
            f"<p>score: <b>{score['killed']} killed, {score['survived']} survived</b>"
            + (f" ({score['percent']} % killed)" if score["percent"] is not None else "")
            + (f"; {score['equivalent']} of the survivors equivalent: {score['killed']} of the "
               f"{score['killed'] + score['survived'] - score['equivalent']} others killed"
               + (f" ({score['percent_non_equivalent']} %)" if score["percent_non_equivalent"] is not None else "")
               if score["equivalent"] else "") + "</p>"
            + "<p>" + ", ".join(f"{e(k)} {v}" for k, v in table["counts"].items()) + "</p>"
            + (f"<p>{len(table['left'])} more selected mutants not reached within the budget: the next run of "
               "the same command does them</p>" if table.get("left") else ""))
    ops = "".join(f"<tr><td>{e(op)}</td><td>{e(', '.join(f'{k} {v}' for k, v in c.items()))}</td></tr>"
                  for op, c in table["by_operator"].items())
    rows = []
    for r in table["mutants"]:
        rows.append(f"<tr class='{e(r['status'])}'><td><code>{e(r['id'])}</code></td><td>{e(r['status'])}</td>"
                    f"<td>{e(r.get('description', ''))}</td><td>{e(str(r.get('detail', '')))}"
                    + (f"<br><i>equivalent: {e(r['equivalent'])}</i>" if "equivalent" in r else "") + "</td>"
                    f"<td><pre>{e(r.get('diff', ''))}</pre></td></tr>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>cnlab mutate</title><style>"
            "body{font-family:sans-serif;margin:1em} table{border-collapse:collapse} "
            "td,th{border:1px solid #ccc;padding:3px;vertical-align:top;font-size:13px} "
            "pre{margin:0;font-size:12px} tr.survived{background:#fdd} tr.killed{background:#dfd} "
            "tr.error{background:#ffd} tr.unchanged,tr.warning,tr.compile-error{color:#777}"
            "</style></head><body><h1>cnlab mutate</h1>" + head
            + "<h2>By operator</h2><table><tr><th>operator</th><th>outcomes</th></tr>" + ops + "</table>"
            + "<h2>Mutants</h2><table><tr><th>id</th><th>status</th><th>change</th><th>detail</th><th>diff</th></tr>"
            + "".join(rows) + "</table></body></html>\n")
