"""Files travel into a guest as one tar stream."""

import io
import sys
import tarfile

import pytest

from lab.errors import LabError
from lab.guest.files import GUEST_LIB, files_tar, guest_programs


def test_the_archive_holds_every_guest_program_under_the_guest_lib(tmp_path):
    archive = files_tar([(p, f"{GUEST_LIB}/{p.name}", 0o644) for p in guest_programs()])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        assert all(m.isfile() and m.mode == 0o644 and m.uid == 0 for m in tar.getmembers())
        tar.extractall(tmp_path, filter="data")
    folder = GUEST_LIB.lstrip("/")
    assert f"{folder}/kabi.py" in names and f"{folder}/agent.py" in names
    assert not any(name.endswith("__init__.py") for name in names)
    assert "class CtlClient" in (tmp_path / folder / "kabi.py").read_text()


def test_modes_are_kept_and_bad_files_are_named(tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    with tarfile.open(fileobj=io.BytesIO(files_tar([(script, "/opt/x/run.sh", 0o755)]))) as tar:
        assert tar.getmember("opt/x/run.sh").mode == 0o755
    with pytest.raises(LabError, match="cannot copy .*missing.py into the guest"):
        files_tar([(tmp_path / "missing.py", "/opt/missing.py", 0o644)])
    with pytest.raises(LabError, match="guest path must be absolute: 'relative/x'"):
        files_tar([(script, "relative/x", 0o644)])


def test_guest_commands_are_executable_and_linked_onto_the_path(tmp_path):
    from lab.guest.files import GUEST_BIN, GUEST_COMMANDS

    files = [(p, f"{GUEST_LIB}/{p.name}", 0o755 if p.name in GUEST_COMMANDS.values() else 0o644)
             for p in guest_programs()]
    links = [(f"{GUEST_BIN}/{name}", f"{GUEST_LIB}/{program}") for name, program in GUEST_COMMANDS.items()]
    with tarfile.open(fileobj=io.BytesIO(files_tar(files, links))) as tar:
        link = tar.getmember("usr/local/bin/cnlabctl")
        assert link.issym() and link.linkname == f"{GUEST_LIB}/cnlabctl.py"
        assert tar.getmember(f"{GUEST_LIB.lstrip('/')}/cnlabctl.py").mode == 0o755
    with pytest.raises(LabError, match="guest path must be absolute"):
        files_tar([], [("usr/bin/x", "/y")])


def test_install_guest_programs_sends_the_programs_and_the_cnlabctl_link_in_one_command():
    from lab.guest.files import install_guest_programs

    class Guest:
        def __init__(self):
            self.calls = []

        def run(self, argv, stdin=None, check=False):
            self.calls.append((argv, stdin))

    guest = Guest()
    assert install_guest_programs(guest) == GUEST_LIB
    ((argv, archive),) = guest.calls
    assert argv[:2] == ["tar", "-x"]
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getmember("usr/local/bin/cnlabctl").issym()
        assert tar.getmember(f"{GUEST_LIB.lstrip('/')}/labmods.py").mode == 0o644


def test_python_files_travel_with_their_byte_code_for_the_guests_python(tmp_path, monkeypatch):
    import importlib.util

    from lab.guest import files

    source = tmp_path / "prog.py"
    source.write_text("X = 41 + 1\n")
    broken = tmp_path / "broken.py"
    broken.write_text("def (:\n")
    monkeypatch.setattr(files, "GUEST_CACHE_TAG", sys.implementation.cache_tag)
    archive = tarfile.open(fileobj=io.BytesIO(files.files_tar([(source, "/run/x/prog.py", 0o644),
                                                              (broken, "/run/x/broken.py", 0o644)])))
    names = archive.getnames()
    pyc = f"run/x/__pycache__/prog.{sys.implementation.cache_tag}.pyc"
    assert pyc in names and not any("broken." in n and n.endswith(".pyc") for n in names)
    data = archive.extractfile(pyc).read()
    assert data[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(data[4:8], "little") == 0b11  # checked hash
    monkeypatch.setattr(files, "GUEST_CACHE_TAG", "cpython-299")  # a host Python that is not the guest's
    archive = tarfile.open(fileobj=io.BytesIO(files.files_tar([(source, "/run/x/prog.py", 0o644)])))
    assert archive.getnames() == ["run/x/prog.py"]
