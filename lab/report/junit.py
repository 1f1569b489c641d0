"""JUnit XML of a run: one test case per scenario.

The suite carries the environment (kernel, accelerator, QEMU, module hash) as
properties and each scenario's metrics as test-case properties.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from lab.plugin.model import ScenarioResult

__all__ = ["write_junit"]


def _report_text(report) -> str:
    decoded = "".join(f"\nat {frame['text']}" for frame in report.get("decoded") or ())
    return f"{report['kind']} {report['fingerprint']}{decoded}\n{report['excerpt']}"


def write_junit(path: Path, records: list[ScenarioResult], environment: dict) -> None:
    """A JUnit XML file with one test case per scenario record (interrupted and not-run ones are skipped)."""
    failures = sum(1 for r in records if r.status == "failed")
    errors = sum(1 for r in records if r.status == "error")
    skipped = sum(1 for r in records if r.status in ("interrupted", "not run"))
    suite = ET.Element("testsuite", name="cnlab", tests=str(len(records)), failures=str(failures),
                       errors=str(errors), skipped=str(skipped), time=f"{sum(r.duration for r in records):.3f}")
    props = ET.SubElement(suite, "properties")
    for key, value in sorted(environment.items()):
        ET.SubElement(props, "property", name=key, value=str(value))
    for record in records:
        case = ET.SubElement(suite, "testcase", classname="cnlab.scenario", name=record.scenario,
                             time=f"{record.duration:.3f}")
        case_props = ET.SubElement(case, "properties")
        for key in ("guest", "retried", "flaky", "attempt"):
            ET.SubElement(case_props, "property", name=key, value=json.dumps(getattr(record, key)))
        for name, metric in sorted(record.metrics.items()):
            ET.SubElement(case_props, "property", name=f"metric.{name}", value=json.dumps(metric))
        failed = [v for v in record.verdicts if not v.ok]
        if record.status == "failed":
            node = ET.SubElement(case, "failure", message="; ".join(v.name for v in failed)[:500])
            node.text = "\n".join(f"{v.name}: {v.detail}" for v in failed)
            for report in record.kernel_reports:
                node.text += "\n\n" + _report_text(report)
            trace = ((record.data or {}).get("flightrec") or {}).get("trace")
            if trace:
                node.text += f"\n\nflight recorder trace: {trace.get('path')}"
        elif record.status == "error":
            node = ET.SubElement(case, "error", message=record.error[:500])
            node.text = record.error + "".join("\n\n" + _report_text(r) for r in record.kernel_reports)
            vmcore = (record.data or {}).get("vmcore")
            if vmcore:
                node.text += f"\n\nvmcore: {vmcore.get('skipped') or vmcore.get('path')}"
        elif record.status in ("interrupted", "not run"):
            ET.SubElement(case, "skipped", message=f"{record.status}: {record.error}"[:500])
        if record.kernel_reports and record.status != "failed":
            # a scenario that expects its report (the self-check) still shows where it came from
            out = ET.SubElement(case, "system-out")
            out.text = "\n\n".join(_report_text(r) for r in record.kernel_reports)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
