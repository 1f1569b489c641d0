"""Decoding report frames to file:line (lab.guest.symbolize), on real consoles and a real object file.

The consoles are recorded from real cnlab guests (``real_warn_then_sysrq_panic.log``: the module's WARN
knob; ``real_module_panic.log``: the module's PANIC knob, with the guest's pvpanic device).  The module
file a unit test can have is an object gcc builds here with debug info and the names of the module's
functions, laid out like a module (relocatable ELF; one function in ``.text.unlikely`` as gcc puts
``.cold`` parts): the real module is decoded by the lab test
(tests/integration/engine/test_diagnosis.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.guest.console_scan import scan_console
from lab.guest.symbolize import Symbolizer, _frames, find_vmlinux, symbolize_reports

HERE = Path(__file__).with_name("consoles")
WARN_LOG = HERE / "real_warn_then_sysrq_panic.log"
PANIC_LOG = HERE / "real_module_panic.log"

SOURCE = """\
static volatile int calls;

static inline __attribute__((always_inline)) int cnlab_dispatch(int op)
{
\tcalls = calls + op;                       /* LINE_DISPATCH */
\treturn calls;
}

__attribute__((noinline, section(".text.unlikely")))
int cnlab_do_fault_cold(int op)
{
\treturn op + calls;                        /* LINE_COLD */
}

__attribute__((noinline))
int cnlab_do_fault(int op)                 /* LINE_FAULT */
{
\treturn cnlab_do_fault_cold(op) + 1;
}

__attribute__((noinline))
int cnlab_ctl_callback(int op)
{
\tint err;

\terr = cnlab_do_fault(op);                /* LINE_CALL */
\terr += cnlab_dispatch(err);
\treturn err;
}
"""


def _line(marker: str) -> int:
    return next(i for i, text in enumerate(SOURCE.splitlines(), start=1) if marker in text)


@pytest.fixture(scope="module")
def module_ko(tmp_path_factory) -> Path:
    """``cnlab.ko``: the source above, compiled with -g to a relocatable object."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    folder = tmp_path_factory.mktemp("ko")
    (folder / "fixture.c").write_text(SOURCE)
    subprocess.run(["gcc", "-g", "-O1", "-fno-pie", "-c", "fixture.c", "-o", "cnlab.ko"], cwd=folder, check=True)
    return folder / "cnlab.ko"


def _return_offset(ko: Path, caller: str, callee: str) -> int:
    """Offset in ``caller`` of the instruction after its call to ``callee`` (a return address)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    with open(ko, "rb") as handle:
        elf = ELFFile(handle)
        symtab = elf.get_section_by_name(".symtab")
        start = next(s["st_value"] for s in symtab.iter_symbols() if s.name == caller)
        for section in elf.iter_sections():
            if isinstance(section, RelocationSection) and section.name == ".rela.text":
                for reloc in section.iter_relocations():
                    if symtab.get_symbol(reloc["r_info_sym"]).name == callee:
                        return reloc["r_offset"] + 4 - start
    raise AssertionError(f"no call from {caller} to {callee}")


def _excerpt(ko: Path) -> str:
    back = _return_offset(ko, "cnlab_ctl_callback", "cnlab_do_fault")
    return "\n".join([
        "[    6.456937] WARNING: CPU: 0 PID: 100 at fixture.c:6 cnlab_do_fault+0x0/0x40 [cnlab]",
        "[    6.462911] RIP: 0010:cnlab_do_fault_cold+0x0/0x20 [cnlab]",
        "[    6.466304] Call Trace:",
        "[    6.466304]  <TASK>",
        "[    6.466304]  ? cnlab_do_fault+0x0/0x40 [cnlab]",
        f"[    6.466304]  cnlab_ctl_callback+{back:#x}/0x80 [cnlab]",
        "[    6.466304]  cn_rx_skb+0x119/0x1a0",
    ])


def test_frames_of_a_real_warning_are_its_trace_lines_not_the_warning_line():
    (warning, _panic) = scan_console(WARN_LOG.read_text())
    frames = _frames(warning.excerpt)
    assert [(f.function, f.module, f.exact) for f in frames][:3] == [
        ("cnlab_do_fault", "cnlab", True), ("cnlab_ctl_callback", "cnlab", False), ("cn_rx_skb", "", False)]
    assert not any(f.function == "get_page_from_freelist" for f in frames)  # a "?" frame


def test_frames_of_a_real_module_panic_include_the_cold_part():
    (panic,) = scan_console(PANIC_LOG.read_text())
    frames = [(f.function, f.offset, f.module) for f in _frames(panic.excerpt)]
    assert ("cnlab_do_fault.cold", 0xC, "cnlab") in frames
    assert ("cnlab_ctl_callback", 0x272, "cnlab") in frames
    assert not any(name == "cnlab_reply_send" for name, _, _ in frames)  # "? cnlab_reply_send+0xb0/0xb0"


def test_module_frames_decode_to_their_source_lines(module_ko):
    decoded = Symbolizer([module_ko]).decode(_excerpt(module_ko))
    by_function = {d.function: d for d in decoded}
    assert set(by_function) == {"cnlab_do_fault_cold", "cnlab_ctl_callback"}  # not "?", not the kernel's
    # the RIP is the instruction itself (offset 0: the function's first statement), in .text.unlikely, not .text
    assert by_function["cnlab_do_fault_cold"].location.endswith(f"fixture.c:{_line('LINE_COLD')}")
    # a return address is looked up one byte back: the call's line, not the next statement's
    assert by_function["cnlab_ctl_callback"].location.endswith(f"fixture.c:{_line('LINE_CALL')}")
    assert all(d.module == "cnlab" for d in decoded)


def test_inlined_code_names_where_it_was_inlined(module_ko):
    from elftools.elf.elffile import ELFFile

    with open(module_ko, "rb") as handle:
        symtab = ELFFile(handle).get_section_by_name(".symtab")
        size = next(s["st_size"] for s in symtab.iter_symbols() if s.name == "cnlab_ctl_callback")
    symbolizer = Symbolizer([module_ko])
    lines = {}
    for offset in range(size):
        for frame in symbolizer.decode(f"RIP: 0010:cnlab_ctl_callback+{offset:#x}/{size:#x} [cnlab]"):
            lines[frame.location.rsplit(":", 1)[1]] = frame
    inlined = lines.get(str(_line("LINE_DISPATCH")))
    assert inlined is not None, lines
    assert inlined.source_function == "cnlab_dispatch"
    assert inlined.inlined and inlined.inlined[0].startswith("cnlab_ctl_callback at ")
    assert "inlined at" in inlined.describe()


def test_a_module_without_debug_info_decodes_nothing(module_ko, tmp_path):
    stripped = tmp_path / "cnlab.ko"
    subprocess.run(["objcopy", "--strip-debug", str(module_ko), str(stripped)], check=True)
    assert Symbolizer([stripped]).decode(_excerpt(module_ko)) == []
    # another module's name: its frames are not ours to decode
    other = tmp_path / "other.ko"
    shutil.copy(module_ko, other)
    assert Symbolizer([other]).decode(_excerpt(module_ko)) == []


def test_decoding_leaves_the_fingerprint_alone_and_offsets_never_count(module_ko):
    text = WARN_LOG.read_text()
    reports = [r.to_dict() for r in scan_console(text)]
    decoded = symbolize_reports(reports, Symbolizer([module_ko]))
    assert [r["fingerprint"] for r in decoded] == [r["fingerprint"] for r in reports]
    assert all("decoded" in r for r in decoded)
    shifted = re.sub(r"\+0x[0-9a-f]+/0x[0-9a-f]+", "+0x1/0x2", text)
    assert [r.fingerprint for r in scan_console(shifted)] == [r["fingerprint"] for r in reports]


def test_vmlinux_is_opt_in(tmp_path):
    assert find_vmlinux("no-such-release", env={}) is None
    assert find_vmlinux("x", env={"CNLAB_VMLINUX": str(tmp_path / "vmlinux")}) == tmp_path / "vmlinux"
    # a vmlinux that is not there decodes no kernel frames (and is no error)
    assert Symbolizer([], vmlinux=tmp_path / "missing").objects == {}
