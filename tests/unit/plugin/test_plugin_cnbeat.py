"""examples/cnlab-cnbeat: pip-installs with its module sources, cnlab loads it through its entry point, its
objects build and its scenario plans, its guest programs and its module agree on the wire format, and its
``cnbeat`` verdict fails on every rigged disagreement between the module's counts and the consumer's."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lab.config import LabConfig
from lab.engine.hooks import kernel_module_dirs
from lab.engine.plan import plan_scenario
from lab.engine.scenario import load_scenario
from lab.plugin import get_plugin_manager
from lab.plugin.model import Scenario
from lab.plugin.objects import GuestProgram, LiveSource

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "examples" / "cnlab-cnbeat"
SCENARIO = PACKAGE / "scenarios" / "cnbeat-faults.toml"
C_SOURCE = (PACKAGE / "src" / "cnlab_cnbeat" / "kmod" / "cnbeat.c").read_text()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("cnbeat") / "site"
    source = target.parent / "source"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)]
    try:
        import wheel  # noqa: F401
    except ImportError:
        pass
    else:
        argv.insert(4, "--no-build-isolation")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No matching distribution found for setuptools" in proc.stderr:
        pytest.skip("pip cannot fetch setuptools to build the example (no package index)")
    assert proc.returncode == 0, proc.stderr
    return target


@pytest.fixture
def pm(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    return get_plugin_manager(LabConfig())


def _define(name: str) -> int:
    return int(re.search(rf"#define {name}\s+(\S+)", C_SOURCE)[1], 0)


def test_the_installed_package_carries_the_module_sources_and_declares_them(pm, installed):
    info = pm.infos["cnbeat"]
    assert (info.source, info.origin) == ("entry point", "cnlab-cnbeat 0.1.0")
    assert set(pm.hooks_of("cnbeat")) == {"lab_kernel_modules_add", "lab_guest_files_add", "lab_emulators_register",
                                          "lab_consumers_register", "lab_result_check"}
    (folder,) = kernel_module_dirs(pm)
    assert folder == (installed / "cnlab_cnbeat" / "kmod").resolve()
    assert {p.name for p in folder.iterdir()} >= {"cnbeat.c", "Kbuild", "Makefile"}


def test_the_plugin_and_the_module_agree_on_the_connector_id_group_and_event(pm):
    import cnlab_cnbeat

    assert (cnlab_cnbeat.IDX, cnlab_cnbeat.VAL, cnlab_cnbeat.GROUP) == (
        _define("CNBEAT_IDX"), _define("CNBEAT_VAL"), _define("CNBEAT_GROUP"))
    assert cnlab_cnbeat.RATE_MAX == _define("CNBEAT_RATE_MAX")
    event = re.search(r"struct cnbeat_event \{(.*?)\};", C_SOURCE, re.S)[1]
    assert re.findall(r"__u(\d+) (\w+);", event) == [("32", "instance"), ("32", "cpu"), ("64", "seq"), ("64", "ts_ns")]
    watch = (Path(cnlab_cnbeat.__file__).parent / "guest" / "watch.py").read_text()
    assert 'struct.Struct("=IIQQ")' in watch and struct.calcsize("=IIQQ") == 24
    drive = (Path(cnlab_cnbeat.__file__).parent / "guest" / "drive.py").read_text()
    final = re.search(r'FINAL = re.compile\(r"(.*)"\)', drive)[1]
    logged = re.search(r'pr_info\("(cnbeat: instance %08x final: .*?)\\n"', C_SOURCE)[1]
    line = logged.replace("%08x", "5f3a0c1e").replace("%lld", "801", 1).replace("%lld", "3")
    assert re.search(final, line).groups() == ("5f3a0c1e", "801", "3")


def test_the_scenario_plans_its_live_source_consumer_and_faults(pm):
    scenario = load_scenario(SCENARIO, pm.registries)
    plan = plan_scenario(scenario, pm.registries)
    (live,) = plan["live"]
    assert live["driver"] == [
        "python3", "/run/cnlab/plugins/cnbeat_drive.py", "--rate", "200", "--seconds", "4.0"]
    assert [f["name"] for f in plan["faults"]] == ["cpu-offline", "module-reload"]
    factory = pm.registries.consumers.get("cnbeat-watch").factory
    assert factory({"rcvbuf": 4096}) == GuestProgram("cnbeat-watch", "cnbeat_watch.py", {"rcvbuf": 4096})
    source = pm.registries.emulators.get("cnbeat").factory({"rate": 10, "seconds": 1.0})
    assert isinstance(source, LiveSource) and (source.idx, source.group) == (0x1C, 28)


def _scenario(pm, reload=True):
    scenario = load_scenario(SCENARIO, pm.registries)
    if not reload:
        scenario = Scenario(scenario.name, scenario.source, objects=tuple(o for o in scenario.objects
                                                                          if o.name != "module-reload"))
    return scenario


def _data(module_instances, received, status=0):
    live = {"name": "cnbeat", "label": "cnbeat", "status": status,
            "stdout": '{"rate":200,"instances":' + __import__("json").dumps(module_instances) + "}\n"}
    consumer = {"name": "cnbeat-watch", "received": sum(r["received"] for r in received.values()),
                "instances": received}
    return {"agent": {"live": [live], "consumers": [consumer]}}


GOOD_MODULE = {"aaaa0001": {"inserted": 850, "failed": 0, "final": True},
               "bbbb0002": {"inserted": 359, "failed": 2, "final": False}}
GOOD_RECEIVED = {"aaaa0001": {"received": 850, "duplicates": 0, "max_seq": 849},
                 "bbbb0002": {"received": 359, "duplicates": 0, "max_seq": 360}}


def _verdict(pm, scenario, data):
    from cnlab_cnbeat import lab_result_check

    (verdict,) = lab_result_check(scenario, data)
    return verdict


def test_the_verdict_passes_when_every_instance_is_reconciled(pm):
    verdict = _verdict(pm, _scenario(pm), _data(GOOD_MODULE, GOOD_RECEIVED))
    assert verdict.ok, verdict.detail
    assert verdict.detail == ("cnbeat-watch received 1209 of the 1209 events 2 cnbeat instance(s) inserted "
                              "(aaaa0001: 850/850, bbbb0002: 359/359; CBUS refused 2)")


@pytest.mark.parametrize(("module", "received", "problem"), [
    (GOOD_MODULE, GOOD_RECEIVED | {"bbbb0002": {"received": 358, "duplicates": 0, "max_seq": 360}},
     "instance bbbb0002: received 358 of 359 inserted"),
    (GOOD_MODULE, GOOD_RECEIVED | {"aaaa0001": {"received": 850, "duplicates": 3, "max_seq": 849}},
     "instance aaaa0001: 3 duplicates"),
    (GOOD_MODULE, GOOD_RECEIVED | {"00000000": {"received": 5, "duplicates": 0, "max_seq": 4}},
     "instance 00000000: 5 events from an instance the module did not report"),
    ({"aaaa0001": GOOD_MODULE["aaaa0001"]}, {"aaaa0001": GOOD_RECEIVED["aaaa0001"]},
     "a module-reload fault ran but the module reported 1 instance(s)"),
    ({"aaaa0001": {"inserted": 0, "failed": 0, "final": False}},
     {"aaaa0001": {"received": 0, "duplicates": 0, "max_seq": -1}}, "the module inserted nothing"),
])
def test_the_verdict_fails_on_each_disagreement(pm, module, received, problem):
    verdict = _verdict(pm, _scenario(pm), _data(module, received))
    assert not verdict.ok and problem in verdict.detail, verdict.detail


def test_the_verdict_fails_without_the_drivers_counts_or_the_consumers_report(pm):
    verdict = _verdict(pm, _scenario(pm), _data(GOOD_MODULE, GOOD_RECEIVED, status=1))
    assert not verdict.ok and "reported no module counts" in verdict.detail
    data = _data(GOOD_MODULE, GOOD_RECEIVED)
    data["agent"]["consumers"] = [{"name": "cnbeat-watch", "missing": True}]
    verdict = _verdict(pm, _scenario(pm), data)
    assert not verdict.ok and "no report" in verdict.detail


def test_the_watch_program_counts_per_instance_and_duplicates():
    sys.path.insert(0, str(ROOT / "lab"))
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("cnbeat_watch",
                                                      PACKAGE / "src" / "cnlab_cnbeat" / "guest" / "watch.py")
        watch = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(watch)
    finally:
        sys.path.remove(str(ROOT / "lab"))
    counts = watch.Counts()
    for instance, seq in [(1, 0), (1, 1), (1, 1), (2, 0), (1, 5)]:
        counts.event(instance, seq)
    assert counts.report() == {"00000001": {"received": 3, "duplicates": 1, "max_seq": 5},
                               "00000002": {"received": 1, "duplicates": 0, "max_seq": 0}}
    assert counts.received == 5
