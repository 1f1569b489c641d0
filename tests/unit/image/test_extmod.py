"""Extra modules: .modinfo, load order, the one-line build error, warnings, name clashes (no compiler here:
``build_module`` is replaced; tests/integration/image/test_extra_modules.py builds for real)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lab.errors import ModuleSourceError
from lab.image import extmod
from lab.image.extmod import ExtraModule, build_extra_modules, first_error, load_order, modinfo, warnings_of
from lab.image.module import CompileError, ModuleBuild


def elf_with_modinfo(path: Path, entries: list[str]) -> Path:
    """A minimal ELF64 little-endian file with a .modinfo section (and the section name table)."""
    modinfo_data = b"".join(e.encode() + b"\0" for e in entries)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    header_size, sh_size = 64, 64
    modinfo_off = header_size
    shstr_off = modinfo_off + len(modinfo_data)
    shoff = shstr_off + len(shstrtab)
    header = bytearray(b"\x7fELF\x02\x01\x01" + b"\0" * 9)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, header_size, 0, 0, sh_size, 3, 2)
    sections = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, modinfo_off, len(modinfo_data), 0, 0, 1, 0),
                struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0)]
    path.write_bytes(bytes(header) + modinfo_data + shstrtab + b"".join(sections))
    return path


def mod(name: str, depends: tuple[str, ...] = (), source: str = "/src") -> ExtraModule:
    return ExtraModule(name, Path(f"/cache/{name}.ko"), Path(source), depends, (), "h")


def test_modinfo_reads_depends_and_name_from_the_elf_section(tmp_path):
    ko = elf_with_modinfo(tmp_path / "cn-beat.ko", ["license=GPL", "depends=cnlab,other", "name=cn_beat",
                                                    "parm=rate:events per second", "parm=warn:WARN once"])
    info = modinfo(ko)
    assert info["depends"] == ["cnlab,other"] and info["name"] == ["cn_beat"]
    assert info["parm"] == ["rate:events per second", "warn:WARN once"]
    assert extmod._depends(info) == ("cnlab", "other") and extmod._module_name(ko, info) == "cn_beat"
    assert extmod._module_name(tmp_path / "my-mod.ko", {}) == "my_mod"


def test_modinfo_refuses_what_is_not_a_module(tmp_path):
    (tmp_path / "x.ko").write_bytes(b"not an elf file at all")
    with pytest.raises(ModuleSourceError, match="not an ELF64 kernel module"):
        modinfo(tmp_path / "x.ko")
    with pytest.raises(ModuleSourceError, match="no .modinfo section"):
        ko = elf_with_modinfo(tmp_path / "y.ko", ["a=b"])
        ko.write_bytes(ko.read_bytes().replace(b".modinfo", b".notinfo"))
        modinfo(ko)


def test_load_order_puts_each_module_after_what_it_depends_on_and_keeps_the_rest_in_order():
    a, b, c, d = mod("a", ("c",)), mod("b", ("cnlab",)), mod("c", ("cnlab", "b")), mod("d")
    assert [m.name for m in load_order([a, b, c, d])] == ["b", "d", "c", "a"]
    assert [m.name for m in load_order([d, b])] == ["d", "b"]


def test_a_dependency_the_lab_does_not_load_and_a_cycle_are_errors():
    with pytest.raises(ModuleSourceError, match="module a .* needs module ghost, which the lab does not load"):
        load_order([mod("a", ("cnlab", "ghost"))])
    with pytest.raises(ModuleSourceError, match="cycle: a -> b, b -> a"):
        load_order([mod("a", ("b",)), mod("b", ("a",))])


GCC_FAILURE = """make: Entering directory '/usr/src/linux-headers-6.1.0-57-cloud-amd64'
  CC [M]  /c/kmod/.k.abc/src/broken.o
/c/kmod/.k.abc/src/broken.c: In function 'b_init':
/c/kmod/.k.abc/src/broken.c:7:16: error: implicit declaration of function 'cbus_insrt' [-Werror=implicit-func\
tion-declaration]
    7 |         return cbus_insrt(&m, GFP_KERNEL);
/c/kmod/.k.abc/src/broken.c:9:1: error: expected ';' before '}' token
make[1]: *** [scripts/Makefile.build:250: /c/kmod/.k.abc/src/broken.o] Error 1
"""
MODPOST_FAILURE = """  MODPOST /c/kmod/.k.abc/src/Module.symvers
ERROR: modpost: "cbus_insert" [/c/kmod/.k.abc/src/m.ko] undefined!
make[2]: *** [scripts/Makefile.modpost:126: /c/kmod/.k.abc/src/Module.symvers] Error 1
"""


def test_first_error_is_the_compilers_first_error_line_then_modpost_then_make():
    assert first_error(GCC_FAILURE).startswith("/c/kmod/.k.abc/src/broken.c:7:16: error: implicit declaration")
    assert first_error(MODPOST_FAILURE) == 'ERROR: modpost: "cbus_insert" [/c/kmod/.k.abc/src/m.ko] undefined!'
    assert first_error("make: *** No rule to make target 'modules'.  Stop.\n").startswith("make: ***")
    assert first_error("") == "make failed without output"


def test_warnings_are_each_warning_line_once_in_order():
    log = ("/s/a.c:3:5: warning: unused variable 'x' [-Wunused-variable]\n  CC x\n"
           "/s/a.c:9:1: warning: no previous prototype for 'f' [-Wmissing-prototypes]\n"
           "/s/a.c:3:5: warning: unused variable 'x' [-Wunused-variable]\nWARNING: modpost: missing MODULE_LICENSE()\n")
    assert warnings_of(log) == ("/s/a.c:3:5: warning: unused variable 'x' [-Wunused-variable]",
                                "/s/a.c:9:1: warning: no previous prototype for 'f' [-Wmissing-prototypes]",
                                "WARNING: modpost: missing MODULE_LICENSE()")
    assert warnings_of("  CC [M] a.o\n  LD [M] a.ko\n") == ()


def _source(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "Kbuild").write_text(f"obj-m := {name}.o\n")
    return folder


@pytest.fixture
def lab_module(tmp_path):
    folder = tmp_path / "cache" / "kmod" / "labkey"
    folder.mkdir(parents=True)
    (folder / "Module.symvers").write_text("0x1\tcbus_insert\t/x/cnlab\tEXPORT_SYMBOL_GPL\t\n")
    return ModuleBuild((folder / "cnlab.ko",), "labhash", "", folder)


def _fake_build(tmp_path, calls, outputs):
    """build_module's stand-in: records its arguments; builds ``outputs[source.name]`` (.ko modinfo entries),
    or fails like make."""
    def build(kernel, cache, source, extra_make, what, log_name):
        calls.append({"source": source, "extra_make": extra_make, "what": what, "log_name": log_name})
        spec = outputs[source.name]
        folder = cache / "kmod" / f"key-{source.name}"
        if isinstance(spec, str):
            tree = cache / "kmod" / f".key-{source.name}.tmp1" / "src"
            raise CompileError("module build failed", spec.replace("/c/kmod/.k.abc/src", str(tree)), tree,
                               cache / "logs" / log_name)
        folder.mkdir(parents=True, exist_ok=True)
        kos = tuple(elf_with_modinfo(folder / f"{name}.ko", [f"name={name}", f"depends={deps}"])
                    for name, deps in spec)
        (folder / "Module.symvers").write_text("")
        log = f"{folder.parent}/.{folder.name}.xyz/src/{source.name}.c:3:5: warning: unused variable 'x'\n"
        return ModuleBuild(kos, f"hash-{source.name}", log, folder)
    return build


def test_modules_build_against_the_lab_modules_symvers_and_come_back_in_load_order(tmp_path, lab_module,
                                                                                   monkeypatch):
    calls = []
    monkeypatch.setattr(extmod, "build_module", _fake_build(tmp_path, calls, {
        "top": [("top", "cnlab,base")], "base": [("base", "cnlab"), ("helper", "")]}))
    top, base = _source(tmp_path, "top"), _source(tmp_path, "base")
    built = build_extra_modules(None, tmp_path / "cache", lab_module, tmp_path / "kmod", [top, base, top])
    assert [m.name for m in built] == ["base", "helper", "top"]
    assert len(calls) == 2  # a folder named twice is built once
    assert calls[0]["extra_make"] == [f"KBUILD_EXTRA_SYMBOLS={lab_module.folder / 'Module.symvers'}",
                                      f"KCFLAGS=-I{(tmp_path / 'kmod').resolve()}"]
    assert calls[1]["extra_make"][0] == (f"KBUILD_EXTRA_SYMBOLS={lab_module.folder / 'Module.symvers'} "
                                         f"{tmp_path / 'cache' / 'kmod' / 'key-top' / 'Module.symvers'}")
    assert calls[0]["what"] == "module top" and calls[0]["log_name"] == "kmod-build-top.log"
    assert built[2].warnings == (f"{top.resolve()}/top.c:3:5: warning: unused variable 'x'",)
    assert built[2].depends == ("cnlab", "base") and built[2].source == top.resolve()


def test_a_build_failure_is_one_line_with_the_first_error_in_the_developers_folder(tmp_path, lab_module,
                                                                                  monkeypatch):
    monkeypatch.setattr(extmod, "build_module", _fake_build(tmp_path, [], {"broken": GCC_FAILURE}))
    broken = _source(tmp_path, "broken")
    with pytest.raises(ModuleSourceError) as info:
        build_extra_modules(None, tmp_path / "cache", lab_module, tmp_path / "kmod", [broken])
    message = str(info.value)
    assert "\n" not in message and info.value.exit_status == 2
    assert message.startswith(f"module {broken.resolve()}: build failed: {broken.resolve()}/broken.c:7:16: error: "
                              "implicit declaration of function 'cbus_insrt'")
    assert message.endswith("(full output in " + str(tmp_path / "cache" / "logs" / "kmod-build-broken.log") + ")")


def test_name_clashes_and_bad_folders_are_errors(tmp_path, lab_module, monkeypatch):
    monkeypatch.setattr(extmod, "build_module", _fake_build(tmp_path, [], {
        "one": [("same", "cnlab")], "two": [("same", "cnlab")], "fake": [("cnlab", "")]}))
    cache, kmod = tmp_path / "cache", tmp_path / "kmod"
    with pytest.raises(ModuleSourceError, match="module same is built by two folders"):
        build_extra_modules(None, cache, lab_module, kmod, [_source(tmp_path, "one"), _source(tmp_path, "two")])
    with pytest.raises(ModuleSourceError, match="builds cnlab.ko, the lab module's name .*--kmod"):
        build_extra_modules(None, cache, lab_module, kmod, [_source(tmp_path, "fake")])
    with pytest.raises(ModuleSourceError, match="not a directory"):
        build_extra_modules(None, cache, lab_module, kmod, [tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModuleSourceError, match="no Kbuild or Makefile"):
        build_extra_modules(None, cache, lab_module, kmod, [tmp_path / "empty"])
    no_symvers = ModuleBuild((), "h", "", tmp_path / "elsewhere")
    with pytest.raises(ModuleSourceError, match="kept no Module.symvers"):
        build_extra_modules(None, cache, no_symvers, kmod, [_source(tmp_path, "three")])
