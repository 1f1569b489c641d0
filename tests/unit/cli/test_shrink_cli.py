"""``cnlab shrink`` from the command line, with the engine's runner replaced by a fake (no guest boots)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import lab.engine.shrink as shrink_module
from lab.cli import main as main_module
from lab.cli.main import main
from lab.engine.shrink import Failure, Outcome

WARN = Failure("failed", ("kernel_problems", "taint"), ("warning:b5774984e41a",))
SELFCHECK = Path(main_module.__file__).resolve().parents[1] / "engine" / "scenarios" / "quick" / "selfcheck-warn.toml"

BUSY = """\
name = "busy"
duration = 3.0

[guest]
cpus = 2

[[emulators]]
name = "generator"
label = "procfork"
rate = 500

[[emulators]]
name = "generator"
label = "timer"
context = "timer"
rate = 400

[[faults]]
name = "warn"
at = 0.5

[[faults]]
name = "cpu-offline"
at = 1.0
duration = 0.5
"""


@pytest.fixture
def fake_engine(monkeypatch, tmp_path):
    """Runs go to a fake: the WARN fails as WARN unless the invariants expect it; records what ran."""
    monkeypatch.chdir(tmp_path)
    for name in ("LAB_DISABLE_PLUGINS", "LAB_TRACE_PLUGINS", "LAB_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)
    ran: list[dict] = []

    def runner(data: dict) -> Outcome:
        ran.append(data)
        warns = any(f["name"] == "warn" for f in data.get("faults", []))
        expected = "warning" in data.get("invariants", {}).get("expect_problems", [])
        return Outcome("failed", WARN, "kernel_problems: ...") if warns and not expected else Outcome("passed")

    def engine_runner(lab, registries, plugin_config, work_dir, on_note=None):
        assert work_dir == Path("results-shrink")
        return runner

    monkeypatch.setattr(shrink_module, "engine_runner", engine_runner)
    monkeypatch.setattr(main_module, "_lab_with_modules", lambda args, pm=None: None)
    return ran


def cnlab(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_failing_scenario_is_shrunk_and_written_as_a_scenario_cnlab_run_accepts(fake_engine, tmp_path, capsys):
    (tmp_path / "busy.toml").write_text(BUSY)
    status, out, err = cnlab(["shrink", "busy.toml", "-o", "min.toml", "--out", "results-shrink"], capsys)
    assert status == 0, err
    assert "[ 1] the scenario as given" in out and "FAIL" in out
    assert "[ 3] drop faults[1] cpu-offline" in out and "kept" in out
    assert "removed: fault cpu-offline; emulator generator (procfork); emulators[0] timer: rate 400 -> 1; " \
           "guest.cpus 2 -> 1; duration 3 -> 0.5" in out
    assert "runs in" in out and "stopped: a whole pass removed nothing more" in out
    written = (tmp_path / "min.toml").read_text()
    assert written.startswith("# Shrunk by cnlab shrink from busy.toml")
    assert tomllib.loads(written) == {"name": "busy-shrunk", "duration": 0.5, "guest": {"cpus": 1},
                                      "emulators": [{"name": "generator", "label": "timer", "context": "timer",
                                                     "rate": 1}],
                                      "faults": [{"name": "warn", "at": 0.5}]}
    # every run went under the shrunk name
    assert {d["name"] for d in fake_engine} == {"busy-shrunk"}
    status, out, _ = cnlab(["check", "min.toml"], capsys)
    assert status == 0 and out.endswith("1 scenario(s) valid\n")


def test_the_default_output_is_named_after_the_scenario(fake_engine, tmp_path, capsys):
    (tmp_path / "busy.toml").write_text(BUSY)
    status, out, _ = cnlab(["shrink", "busy.toml", "--max-runs", "2", "--out", "results-shrink"], capsys)
    assert status == 0
    assert "stopped: the run limit (--max-runs) was reached" in out and "wrote busy-shrunk.toml" in out
    assert len(fake_engine) == 2 and (tmp_path / "busy-shrunk.toml").is_file()


def test_a_passing_scenario_has_nothing_to_shrink_exit_1(fake_engine, tmp_path, capsys):
    status, out, err = cnlab(["shrink", "selfcheck-warn", "--out", "results-shrink"], capsys)
    assert status == 1
    assert err.strip() == f"cnlab shrink: {SELFCHECK} passed: nothing to shrink (shrink needs a scenario that fails)"
    assert len(fake_engine) == 1 and not list(tmp_path.glob("*.toml"))


@pytest.mark.parametrize(("argv", "files", "expected"), [
    (["shrink", "bad.toml"], {"bad.toml": "name = \n"}, "bad.toml: not valid TOML"),
    (["shrink", "typo.toml"], {"typo.toml": BUSY.replace('name = "generator"\nlabel = "timer"',
                                                         'name = "generatr"\nlabel = "timer"')},
     "typo.toml: emulators[1].name: no emulator named 'generatr'"),
    (["shrink", "busy.toml", "-p", "no_such_plugin"], {"busy.toml": BUSY}, "no_such_plugin"),
    (["shrink", "no-such.toml"], {}, "no-such.toml: no such scenario file"),
    (["shrink", "no-such-builtin"], {}, "unknown scenario 'no-such-builtin'"),
    (["shrink", "busy.toml", "--max-runs", "0"], {"busy.toml": BUSY}, "--max-runs must be at least 1"),
    (["shrink", "busy.toml", "--budget", "0"], {"busy.toml": BUSY}, "--budget must be more than 0 seconds"),
    (["shrink", "busy.toml", "--budget", "soon"], {"busy.toml": BUSY}, "not a number of seconds: 'soon'"),
    (["shrink", "busy.toml", "-o", "busy.toml"], {"busy.toml": BUSY}, "is the scenario itself"),
])
def test_bad_input_is_one_line_exit_2_no_run(fake_engine, tmp_path, capsys, argv, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    status, out, err = cnlab(argv, capsys)
    assert status == 2, err
    assert err.startswith("cnlab: error: ") and err.count("\n") == 1 and expected in err, err
    assert "Traceback" not in err + out and not fake_engine
