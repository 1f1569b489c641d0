"""examples/cnlab-example-plugin: pip-installs, and cnlab loads it through its ``cnlab`` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "cnlab-example-plugin"

PROBE = r"""
import json, sys, types
from lab.config import LabConfig
from lab.plugin import ScenarioInfo, call_hook, get_plugin_manager
from lab.kabi import gen_start_body
pm = get_plugin_manager(LabConfig(plugin_tables={"example": {"beat_rate": 75}}))
profile = pm.registries.emulators.build("heartbeat", {"beats": 10})
configs = profile.gen_start_configs([5], 0b11)
gen_start_body(**configs[0])
program = pm.registries.consumers.build("beat-counter")
files = [f for r in call_hook(pm, "lab_guest_files_add", config=pm.config) for f in r]
scenario = ScenarioInfo("beats", emulators=("heartbeat",), consumers=("beat-counter",))
problems = call_hook(pm, "lab_result_check", scenario=scenario,
                     data={"runner": {"consumers": [{"name": "beat-counter", "beats": 0}]}})
fine = call_hook(pm, "lab_result_check", scenario=scenario,
                 data={"runner": {"consumers": [{"name": "beat-counter", "beats": 9}]}})

class FakeGuest:  # answers runplan.py like a guest whose beat-counter saw 200 beats
    link = None  # user networking
    spec = types.SimpleNamespace(accel=types.SimpleNamespace(timeout_scale=1))
    plans = []

    def run(self, argv, timeout=None, check=False, stdin=None):
        from lab.command import CommandResult
        if stdin is not None and argv[0] != "tar":  # the tar stream is the guest files
            self.plans.append(json.loads(stdin))
        report = {"errors": [], "consumers": [{"name": "beat-counter", "beats": 200, "protocol": "oneshot"}],
                  "generators": {}, "cbus": {}, "live": [], "faults": []}
        return CommandResult(list(argv), 0, json.dumps(report).encode())

from lab.plugin import run_scenario
guest = FakeGuest()
result = run_scenario(pm, guest, scenario)
plan = guest.plans[0]
print(json.dumps({
    "scenario": {"passed": result.passed, "problems": list(result.problems), "error": result.error,
                 "generators": [(g["idx"], g["group"], g["context"]) for g in plan["generators"]],
                 "consumers": [c["argv"][1:] for c in plan["consumers"]]},
    "info": pm.infos["example"].__dict__,
    "kind": pm.kind_of("example"),
    "hooks": pm.hooks_of("example"),
    "config": configs[0],
    "argv": program.argv("/g"),
    "files": [f.dest for f in files if f.source.is_file()],
    "problems": [p for r in problems for p in (r or [])],
    "fine": [p for r in fine for p in (r or []) if "beat" in p],
}))
"""


def _pip_install(target: Path) -> None:
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(EXAMPLE)]
    try:
        import wheel  # noqa: F401
    except ImportError:
        pass  # build in isolation (fetches setuptools from the configured index)
    else:
        argv.insert(4, "--no-build-isolation")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No matching distribution found for setuptools" in proc.stderr:
        pytest.skip("pip cannot fetch setuptools to build the example (no package index)")
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("example-site")
    _pip_install(target)
    assert (target / "cnlab_example" / "__init__.py").is_file()
    return target


def _env(target: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT)])
    return env


def test_example_is_loaded_through_its_entry_point(installed, tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=tmp_path,
                          env=_env(installed), timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["info"]["source"] == "entry point"
    assert out["info"]["origin"] == "cnlab-example-plugin 0.1.0"
    assert out["kind"] == "emulator+consumer"
    assert set(out["hooks"]) == {"lab_settings_declare", "lab_emulators_register", "lab_consumers_register",
                                 "lab_guest_files_add", "lab_result_check"}
    assert out["config"]["rate"] == 75 and out["config"]["count"] == 10 and out["config"]["group"] == 26
    assert out["argv"][1] == "/g/example_counter.py"
    assert "/run/cnlab/plugins/example_counter.py" in out["files"]
    assert "beat-counter saw no heartbeats" in out["problems"]
    assert out["fine"] == []
    # a whole scenario through the hooks (guest faked): the runner drives the example's emulator and consumer
    assert out["scenario"]["passed"], out["scenario"]
    assert out["scenario"]["generators"] == [[0x1A, 26, "softirq"]]
    assert out["scenario"]["consumers"] == [["/run/cnlab/plugins/example_counter.py", "--group", "26",
                                             "--seconds", "5.0"]]


def test_cnlab_plugins_lists_and_blocks_the_example(installed, tmp_path):
    run = [sys.executable, "-m", "lab"]
    listed = subprocess.run(run + ["plugins"], capture_output=True, text=True, cwd=tmp_path, env=_env(installed),
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("example "))
    assert "emulator+consumer" in row and "entry point" in row and "cnlab-example-plugin 0.1.0" in row
    assert "heartbeat" in listed.stdout and "beat-counter" in listed.stdout
    blocked = subprocess.run(run + ["-p", "no:example", "plugins"], capture_output=True, text=True, cwd=tmp_path,
                             env=_env(installed), timeout=60)
    assert blocked.returncode == 0, blocked.stderr
    assert "heartbeat" not in blocked.stdout
    bad = tmp_path / "cnlab.toml"
    bad.write_text("[plugins.example]\nbeat_rate = 'fast'\n")
    failed = subprocess.run(run + ["plugins"], capture_output=True, text=True, cwd=tmp_path, env=_env(installed),
                            timeout=60)
    assert failed.returncode == 2
    assert failed.stderr.strip() == "cnlab: error: [plugins.example] beat_rate: expected integer, got str 'fast'"
