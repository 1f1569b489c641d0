"""Ready-made runnable objects for registry factories to return.

* :class:`GeneratorProfile`: an emulated kernel subsystem, as one or more
  ``GEN_START`` configs (``lab.kabi``) on the emulator's connector id and group;
* :class:`LiveSource`: a real kernel connector source plus the guest program
  that makes it talk (cn_proc and a process storm);
* :class:`GuestProgram`: a guest-side program (consumer) and its arguments;
* :class:`CommandFault`: a fault made of guest commands to inject and to restore.

All are frozen and JSON-friendly (``to_json()``), so a plan can be handed to
a guest-side runner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lab import kabi
from lab.errors import PluginError

__all__ = ["GeneratorProfile", "LiveSource", "GuestProgram", "CommandFault", "GEN_FIELDS"]

#: GEN_START fields a profile may set (gen_id, idx, val, group and cpu_mask are filled in by the profile).
GEN_FIELDS = ("count", "duration_ns", "rate", "size_min", "size_max", "context", "path", "flags", "burst")


def _check_gen(name: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(cfg) - set(GEN_FIELDS)
    if unknown:
        raise PluginError(f"emulator {name!r}: unknown GEN_START fields {sorted(unknown)}")
    out = dict(cfg)
    context = out.get("context", "kthread")
    path = out.get("path", "direct")
    if context not in kabi.CTX_NAMES:
        raise PluginError(f"emulator {name!r}: context {context!r} is not one of {sorted(kabi.CTX_NAMES)}")
    if path not in kabi.PATH_NAMES:
        raise PluginError(f"emulator {name!r}: path {path!r} is not one of {sorted(kabi.PATH_NAMES)}")
    if context == "hardirq" and path == "direct":
        raise PluginError(f"emulator {name!r}: hard-IRQ generators need the cbus path")
    lo, hi = out.get("size_min", 32), out.get("size_max", out.get("size_min", 32))
    if not 32 <= lo <= hi <= kabi.CNLAB_PAYLOAD_MAX:
        raise PluginError(f"emulator {name!r}: sizes must satisfy 32 <= size_min <= size_max <= "
                          f"{kabi.CNLAB_PAYLOAD_MAX}, got {lo}..{hi}")
    if not out.get("count") and not out.get("duration_ns"):
        raise PluginError(f"emulator {name!r}: a generator needs a count or a duration")
    if not 0 <= out.get("rate", 0) <= kabi.CNLAB_RATE_MAX or not 0 <= out.get("burst", 0) <= kabi.CNLAB_BURST_MAX:
        raise PluginError(f"emulator {name!r}: rate or burst out of range")
    out.update(context=context, path=path, size_min=lo, size_max=hi)
    return out


@dataclass(frozen=True)
class GeneratorProfile:
    """An emulated subsystem: GEN_START configs sharing one connector id and group.

    :param name: the emulator's name (for messages).
    :param idx: connector idx; :param val: connector val; :param group: netlink group.
    :param generators: GEN_START fields per generator (see :data:`GEN_FIELDS`); ``context`` and
        ``path`` by name.
    """

    name: str
    idx: int
    val: int
    group: int
    generators: tuple[Mapping[str, Any], ...]

    def __post_init__(self) -> None:
        if not self.generators:
            raise PluginError(f"emulator {self.name!r}: no generators")
        object.__setattr__(self, "generators", tuple(_check_gen(self.name, g) for g in self.generators))

    def gen_start_configs(self, gen_ids: Sequence[int], cpu_mask: int) -> list[dict[str, Any]]:
        """Complete ``CtlClient.gen_start(**cfg)`` keyword sets, one per generator.

        :param gen_ids: module generator ids (0..15) to use, at least one per generator.
        :param cpu_mask: CPUs to generate on (bit n = CPU n).
        """
        if len(gen_ids) < len(self.generators):
            raise PluginError(f"emulator {self.name!r} needs {len(self.generators)} generator ids")
        return [dict(g, gen_id=gid, idx=self.idx, val=self.val, group=self.group, cpu_mask=cpu_mask)
                for gid, g in zip(gen_ids, self.generators, strict=False)]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "generators", "name": self.name, "idx": self.idx, "val": self.val, "group": self.group,
                "generators": [dict(g) for g in self.generators]}


@dataclass(frozen=True)
class LiveSource:
    """A real kernel connector source and the guest program that drives it.

    :param name: emulator name; :param idx:, :param val:, :param group: the kernel's connector id and group.
    :param driver: guest argv that makes the kernel produce traffic (e.g. a process storm).
    :param listen: consumers must send ``PROC_CN_MCAST_LISTEN`` first (cn_proc).
    """

    name: str
    idx: int
    val: int
    group: int
    driver: tuple[str, ...]
    listen: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"kind": "live", "name": self.name, "idx": self.idx, "val": self.val, "group": self.group,
                "driver": list(self.driver), "listen": self.listen}


@dataclass(frozen=True)
class GuestProgram:
    """A guest-side program (a consumer) and its options.

    :param name: consumer name; :param program: file name under the guest plugin folder.
    :param options: ``--key value`` options (``True`` is a bare flag, ``False``/None omitted).
    :param instances: how many copies to run side by side.
    :param protocol: ``checker``: the program takes ``--groups/--name/--out``, runs until SIGTERM and writes
        its JSON report to ``--out`` (``consume.py``); ``oneshot``: it runs to completion on its own options
        and prints one JSON line on stdout.
    :param interpreter: what runs ``program`` (``python3``), or None for a native program run directly; a
        ``program`` starting with ``/`` is a path in the guest, else a file in the guest plugin folder.
    """

    name: str
    program: str
    options: Mapping[str, Any] = field(default_factory=dict)
    instances: int = 1
    protocol: str = "checker"
    interpreter: str | None = "python3"

    def __post_init__(self) -> None:
        if self.protocol not in ("checker", "oneshot"):
            raise PluginError(f"consumer {self.name!r}: protocol {self.protocol!r} is not checker or oneshot")

    def argv(self, folder: str, python: str | None = None) -> list[str]:
        """The guest command line: interpreter (``python`` overrides it for a Python program), program,
        options."""
        program = self.program if self.program.startswith("/") else f"{folder}/{self.program}"
        interpreter = (python or self.interpreter) if self.interpreter else None
        out = ([interpreter] if interpreter else []) + [program]
        for key, value in sorted(self.options.items()):
            if value is None or value is False:
                continue
            out.append("--" + key.replace("_", "-"))
            if value is not True:
                out.append(str(value))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"kind": "program", "name": self.name, "program": self.program, "options": dict(self.options),
                "instances": self.instances, "protocol": self.protocol, "interpreter": self.interpreter}


@dataclass(frozen=True)
class CommandFault:
    """A fault made of guest commands (argv lists) run at inject and at restore time.

    :param name: fault name; :param inject: argv lists to inject; :param restore: argv lists to undo.
    :param phase: the scenario phase it wraps (default ``load``).
    :param delay_s: seconds into the phase before injecting.
    :param hold_s: seconds between inject and restore; 0: restore when the phase's load is over.  Host-side
        faults (argv ``("qmp", command)``) always use it.
    """

    name: str
    inject: tuple[tuple[str, ...], ...]
    restore: tuple[tuple[str, ...], ...] = ()
    phase: str = "load"
    delay_s: float = 0.0
    hold_s: float = 0.0

    @property
    def host_side(self) -> bool:
        """True when the fault acts from the host (argv ``("qmp", command)`` or ``("link", "up"|"down")``)
        rather than by guest commands."""
        return any(argv[:1] in (("qmp",), ("link",)) for argv in self.inject)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "commands", "name": self.name, "inject": [list(a) for a in self.inject],
                "restore": [list(a) for a in self.restore], "phase": self.phase, "delay_s": self.delay_s,
                "hold_s": self.hold_s}
