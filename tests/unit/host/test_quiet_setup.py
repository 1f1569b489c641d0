"""Quiet set-up: apt's and pip's output goes to a log file; only a failure shows it, naming the file."""

import os
import stat
import sys
from pathlib import Path

import pytest

import lab.cli.bootstrap as bootstrap
import lab.host.packages as hostdeps
from lab.errors import HostSetupError
from lab.host.quiet import run_logged

NOISE = "WARNING: Location 'file:///opt/pypi-more/simple/pluggy/' is ignored: it is neither a file nor a directory."


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_a_command_that_succeeds_prints_nothing_and_keeps_its_output(tmp_path, capfd):
    log = tmp_path / "logs" / "x.log"
    run_logged(["sh", "-c", f"echo \"{NOISE}\"; echo more >&2"], log, "noisy")
    assert capfd.readouterr() == ("", "")
    assert NOISE in log.read_text() and "more" in log.read_text()


def test_a_command_that_fails_names_its_log_and_quotes_its_end(tmp_path, capfd):
    log = tmp_path / "x.log"
    with pytest.raises(HostSetupError) as info:
        run_logged(["sh", "-c", "echo first; echo 'E: Unable to locate package nosuch' >&2; exit 100"], log, "apt")
    message = str(info.value)
    assert "apt failed (exit 100)" in message and "Unable to locate package nosuch" in message
    assert str(log) in message and "\n" not in message
    assert capfd.readouterr() == ("", "")


def test_a_missing_program_is_a_one_line_error(tmp_path):
    with pytest.raises(HostSetupError, match="cannot run /nonexistent/tool"):
        run_logged(["/nonexistent/tool"], tmp_path / "x.log", "tool")
    with pytest.raises(TypeError):
        run_logged("echo hi", tmp_path / "x.log", "a string")


def test_root_installs_packages_quietly_and_a_failure_names_apt_log(tmp_path, monkeypatch, capfd):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "apt-get", 'echo "Reading package lists... $*"\n[ "$1" = update ] && exit 0\n'
                                 'for last; do :; done\necho "E: Unable to locate package $last" >&2\nexit 100\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(hostdeps, "_installed", lambda name: name != "mmdebstrap")
    monkeypatch.setattr(hostdeps.os, "geteuid", lambda: 0)
    with pytest.raises(HostSetupError) as info:
        hostdeps.ensure_packages(log_dir=tmp_path / "logs")
    log = tmp_path / "logs" / "apt.log"
    assert f"full output in {log}" in str(info.value) and "Unable to locate package mmdebstrap" in str(info.value)
    assert "Reading package lists... update" in log.read_text()
    assert capfd.readouterr() == ("", "")


def test_the_venv_step_keeps_pips_warnings_in_its_log(tmp_path, monkeypatch, capfd):
    """A fake ``python3 -m venv`` makes a venv whose pip prints the index warnings of this machine's pip.conf."""
    fake_pip = f'echo "{NOISE}" >&2\necho "Successfully installed cnlab"\nexit ${{PIP_STATUS:-0}}\n'
    fake_python = _script(tmp_path / "python3", f"""mkdir -p "$3/bin"
cat > "$3/bin/python" <<'EOF'
#!/bin/sh
{fake_pip}EOF
chmod +x "$3/bin/python"
""")
    monkeypatch.setattr(sys, "executable", str(fake_python))
    venv, logs = tmp_path / "venv", tmp_path / "logs"
    python = bootstrap._ensure_venv(venv, logs)
    assert python == venv / "bin" / "python" and (venv / ".cnlab-installed").exists()
    assert capfd.readouterr() == ("", "")
    assert NOISE in (logs / "pip.log").read_text()
    (venv / ".cnlab-installed").unlink()
    monkeypatch.setenv("PIP_STATUS", "1")
    with pytest.raises(HostSetupError) as info:
        bootstrap._ensure_venv(venv, logs)
    assert f"full output in {logs / 'pip.log'}" in str(info.value) and "pip install" in str(info.value)
    assert capfd.readouterr() == ("", "")


def test_a_failed_module_build_keeps_its_log(tmp_path):
    from lab.errors import BuildError
    from lab.image.kernel import KernelSpec
    from lab.image.module import build_module

    kbuild = tmp_path / "kbuild"
    kbuild.mkdir()
    (kbuild / "Makefile").write_text("modules:\n\t@echo 'cbus.c:12:5: error: boom' >&2; echo noise; exit 2\n")
    source = tmp_path / "src"
    source.mkdir()
    (source / "cbus.c").write_text("int x;\n")
    kernel = KernelSpec(image=tmp_path / "vmlinuz", release="6.1.0-test", modules_dir=None, kbuild_dir=kbuild)
    with pytest.raises(BuildError) as info:
        build_module(kernel, tmp_path / "cache", source=source)
    log = tmp_path / "cache" / "logs" / "kmod-build.log"
    assert "cbus.c:12:5: error: boom" in str(info.value) and f"full output in {log}" in str(info.value)
    assert "noise" in log.read_text()


def test_doctor_skips_the_set_up(monkeypatch):
    import lab.cli.main

    monkeypatch.setenv("CNLAB_VENV", "/nonexistent/venv")
    monkeypatch.setattr(bootstrap, "ensure_packages", lambda **kwargs: pytest.fail("installed packages"))
    monkeypatch.setattr(bootstrap, "_ensure_venv", lambda *args: pytest.fail("made a venv"))
    monkeypatch.setattr(lab.cli.main, "main", lambda argv: 7 if argv == ["--cache", "/x", "doctor"] else 0)
    assert bootstrap.bootstrap_and_run(["--cache", "/x", "doctor"]) == 7


@pytest.mark.parametrize("argv, wants_chromium", [(["test"], True), (["run"], False)])
def test_the_test_command_also_installs_the_test_packages(monkeypatch, tmp_path, argv, wants_chromium):
    asked = []

    def stop_before_exec(*args):
        raise KeyboardInterrupt  # bootstrap_and_run turns it into 130 before it would exec the venv

    monkeypatch.setenv("CNLAB_VENV", str(tmp_path / "venv"))
    monkeypatch.setenv("CNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bootstrap, "ensure_packages", lambda packages=None, **kwargs: asked.append(packages))
    monkeypatch.setattr(bootstrap, "_ensure_venv", stop_before_exec)
    assert bootstrap.bootstrap_and_run(argv) == 130
    assert len(asked) == 1
    assert ("chromium" in (asked[0] or {})) is wants_chromium
