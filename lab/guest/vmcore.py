"""Reading the lab module's state out of a guest's vmcore with drgn.

Works without the kernel's debug info (the Debian ``-dbg`` package is not
needed), from three sources:

* the dump's VMCOREINFO note (QEMU's ``vmcoreinfo`` device, the guest's
  ``qemu_fw_cfg`` driver): drgn sets up the kernel's page tables and, from
  the kallsyms tables the note points to (Linux >= 6.0), the kernel's
  symbols (``modules``, ``jiffies``, ``__per_cpu_offset``, the CPU masks);
* the module's own DWARF (the unstripped ``.ko`` kept in the cache): the
  module's types, and the kernel types the module uses (``struct module``,
  ``struct task_struct``, ``struct list_head``) as the module was compiled
  against them;
* the module's symbol table in guest memory (``mod->kallsyms``): the load
  address of each of its sections, so drgn can relocate the module's DWARF
  and find its variables (``cnlab_gens``, ``cbus_pcpu``, ...).

What does not work without vmlinux debug info: kernel variables by name with
their types (only their addresses, read as raw words), kernel stack traces,
and kernel types the module never uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import kabi
from lab.errors import LabError, UsageError

__all__ = ["ModuleState", "read_module_state", "format_state"]

#: task_struct.__state bits (include/linux/sched.h, 6.1)
_TASK_STATES = {0: "running", 1: "sleeping", 2: "uninterruptible", 4: "stopped", 8: "traced", 0x40: "parked",
                0x80: "dead", 0x402: "idle"}


_PATHS = {v: k for k, v in kabi.PATH_NAMES.items()}
_CONTEXTS = {v: k for k, v in kabi.CTX_NAMES.items()}


@dataclass
class ModuleState:
    """The lab module's state at the time of the dump."""

    module: str
    jiffies: int
    hz: int
    cpus: list[dict[str, Any]] = field(default_factory=list)
    generators: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)
    control: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "jiffies": self.jiffies, "hz": self.hz, "cpus": self.cpus,
                "generators": self.generators, "counters": self.counters, "control": self.control,
                "sections": {k: hex(v) for k, v in self.sections.items()}}


def _drgn():
    try:
        import drgn
    except ImportError as exc:
        raise LabError("cnlab debug needs drgn: install it with `.venv/bin/pip install 'cnlab[debug]'` "
                       "(or `pip install drgn`)") from exc
    return drgn


def _base_program(core: Path):
    drgn = _drgn()
    from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms

    prog = drgn.Program()
    try:
        prog.set_core_dump(str(core))
    except (OSError, ValueError, drgn.FaultError, Exception) as exc:  # drgn raises plain Exception too
        raise UsageError(f"{core}: not a readable core dump ({exc})") from None
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise UsageError(f"{core}: no Linux VMCOREINFO in this dump (was the guest's vmcoreinfo device there?)")
    try:
        prog.register_symbol_finder("kallsyms", load_vmlinux_kallsyms(prog), enable_index=0)
    except Exception as exc:  # noqa: BLE001 - a kernel without kallsyms in VMCOREINFO (< 6.0)
        raise LabError(f"{core}: cannot read the kernel's kallsyms from VMCOREINFO ({exc}); "
                       "a kernel >= 6.0 is needed without vmlinux debug info") from None
    return prog


def _section_addresses(core: Path, ko: Path, name: str) -> tuple[dict[str, int], int]:
    """``{section: load address}`` of module ``name`` in the dump, and its ``struct module`` address."""
    drgn = _drgn()
    from drgn.helpers.linux.kallsyms import module_kallsyms
    from drgn.helpers.linux.list import list_for_each_entry
    from elftools.elf.elffile import ELFFile

    prog = _base_program(core)
    prog.extra_module(str(ko), create=True).try_file(str(ko), force=True)  # types only, unrelocated
    head = drgn.Object(prog, "struct list_head", address=prog.symbol("modules").address)
    found = None
    for mod in list_for_each_entry("struct module", head.address_of_(), "list"):
        if mod.name.string_().decode(errors="replace") == name:
            found = mod
            break
    if found is None:
        raise LabError(f"module {name} is not loaded in this dump")
    loaded = {sym.name: sym.address for sym in module_kallsyms(found)}
    sections: dict[str, int] = {}
    with open(ko, "rb") as handle:
        elf = ELFFile(handle)
        names = {i: s.name for i, s in enumerate(elf.iter_sections())}
        for sym in elf.get_section_by_name(".symtab").iter_symbols():
            if (isinstance(sym["st_shndx"], int) and sym.name in loaded
                    and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT")):
                sections.setdefault(names[sym["st_shndx"]], loaded[sym.name] - sym["st_value"])
    return sections, found.value_()


def _word(prog, symbol: str, index: int = 0) -> int:
    return prog.read_u64(prog.symbol(symbol).address + 8 * index)


def _cpus(prog) -> list[int]:
    mask = _word(prog, "__cpu_possible_mask")
    return [cpu for cpu in range(64) if mask >> cpu & 1]


def _enum_name(obj) -> str:
    value = obj.value_()
    for name, number in obj.type_.enumerators or ():
        if number == value:
            return name
    return str(value)


def _age(now: int, then: int, hz: int) -> float:
    return round(((now - then) & (2**64 - 1)) / hz, 3)


def _task(task) -> dict[str, Any]:
    if not task.value_():
        return {}
    state = task.member_("__state").value_()
    return {"comm": task.comm.string_().decode(errors="replace"), "state": _TASK_STATES.get(state, hex(state)),
            "on_cpu": task.on_cpu.value_(), "pid": task.pid.value_()}


def _cbus(prog, now: int, hz: int) -> list[dict[str, Any]]:
    drgn = _drgn()
    base = prog["cbus_pcpu"].value_()
    out = []
    for cpu in _cpus(prog):
        cc = drgn.Object(prog, "struct cbus_cpu", address=base + _word(prog, "__per_cpu_offset", cpu))
        inserted, sent = cc.inserted.value_(), cc.sent.value_()
        drops = {k: cc.member_(k).value_() for k in ("drop_full", "drop_nomem", "drop_nolistener", "drop_overrun",
                                                      "drop_nlerr")}
        on_list = cc.enq.value_() - cc.deq.value_()
        backlog = bool(cc.backlog.value_())
        oldest = None
        if backlog:
            oldest = _age(now, cc.backlog_since.value_(), hz)
        elif cc.list.first.value_():
            oldest = _age(now, cc.queued_since.value_(), hz)
        out.append({
            "cpu": cpu, "inserted": inserted, "sent": sent, **drops,
            "queued": max(0, inserted - sent - sum(drops.values())), "on_list": on_list, "backlog": backlog,
            "oldest_age_s": oldest, "hwm": cc.hwm.value_(), "kicks": cc.kicks.value_(),
            "drain": {"state": _enum_name(cc.drain_state).removeprefix("CBUS_DRAIN_").lower(),
                      "since_s": _age(now, cc.drain_jiffies.value_(), hz) if cc.drain_jiffies.value_() else None,
                      "thread": _task(cc.thread)},
        })
    return out


def _generators(prog) -> list[dict[str, Any]]:
    drgn = _drgn()
    gens = prog["cnlab_gens"]
    out = []
    for i in range(len(gens)):
        gen = gens[i]
        if not gen.used.value_():
            continue
        cfg = gen.cfg
        per_cpu = []
        if gen.pcpu.value_():
            for cpu in _cpus(prog):
                gc = drgn.Object(prog, "struct gen_cpu",
                                 address=gen.pcpu.value_() + _word(prog, "__per_cpu_offset", cpu))
                if gc.seq.value_():
                    per_cpu.append({"cpu": cpu, "generated": gc.seq.value_(), "ok": gc.ok.value_()})
        state = "stopped" if gen.stopped.value_() else "done" if gen.end_ns.value_() else "running"
        out.append({"id": gen.id.value_(), "state": state,
                    "active": gen.active.counter.value_(), "path": _PATHS.get(cfg.path.value_(), cfg.path.value_()),
                    "context": _CONTEXTS.get(cfg.context.value_(), cfg.context.value_()),
                    "rate": cfg.rate.value_(), "count": cfg.count.value_(),
                    "generated": sum(c["generated"] for c in per_cpu), "per_cpu": per_cpu})
    return out


def _control(prog, now: int, hz: int) -> list[dict[str, Any]]:
    ring = prog["cnlab_ctl_ring"]
    names = {value: name.removeprefix("CNLAB_MSG_").lower()
             for name, value in prog.type("enum cnlab_msg_type").enumerators}
    records = []
    for i in range(len(ring)):
        rec = ring[i]
        if not rec.ns.value_():
            continue
        status = rec.status.value_()
        records.append({"ns": rec.ns.value_(), "type": names.get(rec.type.value_(), str(rec.type.value_())),
                        "status": "pending" if status == 1 else status, "portid": rec.portid.value_(),
                        "seq": rec.seq.value_(), "cpu": rec.cpu.value_(), "len": rec.len.value_(),
                        "age_s": _age(now, rec.jiffies.value_(), hz)})
    return sorted(records, key=lambda r: r["ns"])


def read_module_state(core: Path, modules: Sequence[Path], name: str = "cnlab") -> ModuleState:
    """The state of module ``name`` in the dump ``core``, read with the debug info in ``modules``."""
    drgn = _drgn()
    ko = next((m for m in modules if m.name.split(".ko")[0].replace("-", "_") == name), None)
    if ko is None or not ko.exists():
        raise UsageError(f"no debug file for module {name} (give it with --module PATH.ko)")
    sections, module_address = _section_addresses(core, ko, name)
    prog = _base_program(core)
    module = prog.relocatable_module(name, module_address, create=True)
    for section, address in sections.items():
        module.section_addresses[section] = address
    module.try_file(str(ko), force=True)
    try:
        now = _word(prog, "jiffies")
        hz = prog["cnlab_hz"].value_()
        state = ModuleState(name, now, hz, sections=sections)
        state.cpus = _cbus(prog, now, hz)
        state.generators = _generators(prog)
        state.control = _control(prog, now, hz)
        totals = {k: sum(c[k] for c in state.cpus) for k in ("inserted", "sent", "queued", "drop_full",
                                                           "drop_nomem", "drop_nolistener", "drop_overrun",
                                                           "drop_nlerr")}
        state.counters = {"cbus": totals, "queue_limit": prog["cbus_limit"].value_(),
                          "ctl_requests": prog["ctl_requests"].counter.value_(),
                          "ctl_errors": prog["ctl_errors"].counter.value_(),
                          "ctl_reply_fail": prog["ctl_reply_fail"].counter.value_()}
    except (KeyError, LookupError, drgn.FaultError) as exc:
        raise LabError(f"{core}: cannot read {name}'s state: {exc} (a module built from other sources?)") from None
    return state


def format_state(state: ModuleState) -> str:
    """The state as a person reads it."""
    lines = [f"module {state.module}: jiffies {state.jiffies} (HZ {state.hz}); CBUS queue limit "
             f"{state.counters.get('queue_limit')}"]
    lines.append(f"{'cpu':>3} {'queued':>7} {'list':>6} {'oldest s':>8} {'inserted':>9} {'sent':>9} "
                 f"{'drops':>6}  drain thread")
    for c in state.cpus:
        drops = sum(c[k] for k in c if k.startswith("drop_"))
        drain = c["drain"]
        thread = drain["thread"]
        since = f" {drain['since_s']} s ago" if drain["since_s"] is not None else ""
        task = f"; {thread['comm']} pid {thread['pid']} {thread['state']}" if thread else "; no thread"
        oldest = "-" if c["oldest_age_s"] is None else f"{c['oldest_age_s']:.3f}"
        lines.append(f"{c['cpu']:>3} {c['queued']:>7} {c['on_list']:>6} "
                     f"{oldest:>8} {c['inserted']:>9} {c['sent']:>9} {drops:>6}  {drain['state']}{since}{task}")
    lines.append("generators:" + (" none started" if not state.generators else ""))
    for g in state.generators:
        lines.append(f"  gen {g['id']}: {g['state']}, {g['active']} CPU instance(s) "
                     f"active, path {g['path']}, context {g['context']}, rate {g['rate']}/s, generated "
                     f"{g['generated']}")
    counters = state.counters
    lines.append(f"counters: {counters.get('cbus')}; control requests {counters.get('ctl_requests')}, errors "
                 f"{counters.get('ctl_errors')}, reply failures {counters.get('ctl_reply_fail')}")
    lines.append(f"last control requests (oldest first, {len(state.control)}):")
    for r in state.control:
        lines.append(f"  {r['age_s']:>8.3f} s ago  {r['type']:12} status {r['status']!s:8} cpu {r['cpu']} "
                     f"port {r['portid']} seq {r['seq']} len {r['len']}")
    return "\n".join(lines)
