"""docs/plugins.md stays true: its plugin files load, its commands print what the page says, its quotes
of the example package are in the package, and every bad-input line it lists is what ``cnlab check`` prints.

The page is read here, not copied: change a snippet or an output on the page and these tests run the new
text (``tests/unit/docs/snippets.py`` says how a page marks what runs).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.cli.main import main as cnlab_main

from .snippets import bad_input_rows, run_steps, steps

ROOT = Path(__file__).resolve().parents[3]
PAGE = (ROOT / "docs" / "plugins.md").read_text()
EXAMPLE = ROOT / "examples" / "cnlab-example-plugin"


@pytest.fixture
def cnlab(tmp_path, monkeypatch, capsys):
    """``cnlab(argv, folder)`` runs ``cnlab ARGV`` in-process in ``folder``: ``(exit status, stdout + stderr)``."""
    monkeypatch.chdir(tmp_path)
    for name in ("LAB_DISABLE_PLUGINS", "LAB_TRACE_PLUGINS", "LAB_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)

    def run(argv: list[str], folder: Path = tmp_path) -> tuple[int, str]:
        monkeypatch.chdir(folder)
        status = cnlab_main(argv)
        captured = capsys.readouterr()
        return status, captured.out + captured.err

    return run


def test_the_walkthrough_files_load_and_every_command_prints_what_the_page_says(tmp_path, cnlab):
    page_steps = steps(PAGE)
    written = {s.path for s in page_steps if s.kind == "file"}
    assert {"my-plugins/heartbeat.py", "my-plugins/heartbeat_guest/counter.py", "heartbeat.toml",
            "cnlab.toml"} <= written
    ran = run_steps(page_steps, tmp_path, cnlab)
    assert ran >= 8, f"only {ran} commands of docs/plugins.md ran"


def test_step_one_is_a_one_file_plugin_whose_scenario_passes_cnlab_check(tmp_path, cnlab):
    """Step 1 alone (the first version of heartbeat.py and heartbeat.toml): loads from a plugins dir, checks."""
    first: dict[str, str] = {}
    for step in steps(PAGE):
        if step.kind == "file" and step.path not in first:
            first[step.path] = step.text
    for path in ("my-plugins/heartbeat.py", "heartbeat.toml"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(first[path])
    assert list((tmp_path / "my-plugins").glob("*.py")) == [tmp_path / "my-plugins" / "heartbeat.py"]
    status, printed = cnlab(["--plugins-dir", "my-plugins", "check", "heartbeat.toml"])
    assert status == 0, printed
    assert "heartbeat = heartbeat (plugin heartbeat)" in printed and printed.endswith("1 scenario(s) valid\n")
    status, printed = cnlab(["--plugins-dir", "my-plugins", "plugins"])
    assert status == 0 and "heartbeat   emulator  directory" in printed, printed


def test_the_page_quotes_the_example_package_word_for_word():
    excerpts = [s for s in steps(PAGE) if s.kind == "excerpt"]
    assert len(excerpts) >= 6
    for step in excerpts:
        source = (ROOT / step.path).read_text()
        assert step.text in source, f"docs/plugins.md line {step.line}: not in {step.path}:\n{step.text}"


def test_the_walkthrough_counter_is_the_packages_guest_program():
    counter = next(s.text for s in steps(PAGE) if s.path == "my-plugins/heartbeat_guest/counter.py")
    assert counter == (EXAMPLE / "src" / "cnlab_example" / "guest" / "counter.py").read_text()


ROWS = bad_input_rows(PAGE)


def test_the_page_lists_the_bad_inputs():
    assert len(ROWS) >= 40


@pytest.mark.parametrize(("toml", "message", "line"), ROWS, ids=[f"line{r[2]}" for r in ROWS])
def test_every_bad_input_line_is_what_cnlab_check_prints(tmp_path, cnlab, toml, message, line):
    (tmp_path / "bad.toml").write_text(toml)
    status, printed = cnlab(["check", "bad.toml"])
    assert (status, printed) == (2, message + "\n"), f"docs/plugins.md line {line}"


def test_fixed_gap_a_raising_result_check_keeps_the_engines_verdicts(tmp_path):
    from lab import hookimpl
    from lab.config import LabConfig
    from lab.engine.execute import execute_scenario
    from lab.engine.scenario import scenario_from_dict
    from lab.plugin import get_plugin_manager

    from ..engine.test_execute import FakeGuest

    class Raises:
        @hookimpl
        def lab_result_check(self):
            raise ValueError("oops")

    pm = get_plugin_manager(LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"}))
    pm.add_plugin(Raises(), "raises", "test", "here")
    scenario = scenario_from_dict({"emulators": [{"name": "generator"}]}, "s.toml", pm.registries)
    record = execute_scenario(pm, FakeGuest(tmp_path), scenario, "/run/cnlab/py")
    assert [v.name for v in record.verdicts if not v.ok] == ["hooks"]
    assert "accounting" in {v.name for v in record.verdicts}
