"""Files travel into a guest as one tar stream."""

import io
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
