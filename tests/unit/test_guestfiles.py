"""The guest programs travel as one tar stream."""

import io
import tarfile

from lab.guestfiles import GUEST_LIB, guest_programs_tar


def test_the_archive_holds_every_guest_program_under_the_guest_lib(tmp_path):
    with tarfile.open(fileobj=io.BytesIO(guest_programs_tar())) as tar:
        names = tar.getnames()
        assert all(m.isfile() and m.mode == 0o644 and m.uid == 0 for m in tar.getmembers())
        tar.extractall(tmp_path, filter="data")
    folder = GUEST_LIB.lstrip("/")
    assert f"{folder}/kabi.py" in names and f"{folder}/scenario_agent.py" in names
    assert not any(name.endswith("__init__.py") for name in names)
    extracted = (tmp_path / folder / "kabi.py").read_text()
    assert "class CtlClient" in extracted
