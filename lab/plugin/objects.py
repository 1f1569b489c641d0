"""What registry factories return: the runnable objects the engine drives.

* :class:`GeneratorProfile`: an emulated kernel subsystem, as one or more
  ``GEN_START`` configs (``lab.kabi``) on the emulator's connector id and group;
* :class:`LiveSource`: a real kernel connector source plus the guest program
  that makes it talk (cn_proc and a process storm);
* :class:`GuestProgram`: a consumer: a guest program and its arguments;
* :class:`Fault`: actions that inject a fault and actions that undo it
  (:func:`write_file`, :func:`module_knob`, :func:`cpu_online`, :func:`run`,
  :func:`spawn`, :func:`signal_consumers` in the guest; :func:`qmp` on the
  host).  The scenario says when it fires (``at``, ``every``, ``on``); the
  guest agent fires it, without starting a program per injection;
* event probes (:class:`AgentCounter`, :class:`FileCounter`): what an event a
  fault can wait for counts.

All are frozen and JSON-friendly (``to_json()``): the plan the engine hands to
the guest agent is made of them.  ``docs/guest-contract.md`` says what the
guest side does with each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lab import kabi
from lab.errors import PluginError

__all__ = [
    "GeneratorProfile",
    "LiveSource",
    "GuestProgram",
    "Action",
    "Fault",
    "write_file",
    "module_knob",
    "cpu_online",
    "run",
    "spawn",
    "signal_consumers",
    "qmp",
    "expect_file",
    "expect_absent",
    "expect_knob",
    "expect_output",
    "expect_consumers_gone",
    "expect_spawned_running",
    "expect_qmp_status",
    "AgentCounter",
    "FileCounter",
    "GEN_FIELDS",
    "KNOBS",
    "GUEST_ACTIONS",
    "HOST_ACTIONS",
    "AGENT_EVENTS",
]

#: GEN_START fields a profile may set (gen_id, val, group and cpu_mask are filled in by the engine; idx 0
#: is replaced by a unique even idx per emulator; count 0 with duration_ns 0 runs for the scenario's duration).
GEN_FIELDS = ("count", "duration_ns", "rate", "size_min", "size_max", "context", "path", "flags", "burst",
              "cpu_mask")
#: Module knobs a fault can set (SET_FAULT ops, docs/kmod.md).
KNOBS = {"stall_ms": kabi.CNLAB_FAULT_STALL_MS, "alloc_nth": kabi.CNLAB_FAULT_ALLOC_NTH,
         "queue_limit": kabi.CNLAB_FAULT_QLIMIT, "warn": kabi.CNLAB_FAULT_WARN,
         "panic": kabi.CNLAB_FAULT_PANIC}
#: Actions the guest agent carries out itself (``expect``: evidence that a fault took effect).
GUEST_ACTIONS = ("write", "knob", "cpu", "exec", "spawn", "signal", "expect")
#: Actions the orchestrator carries out on the host when the agent says the fault fires.
HOST_ACTIONS = ("qmp", "expect-qmp")
#: Events the guest agent counts itself (``AgentCounter``).
AGENT_EVENTS = {
    "received": "messages the scenario's consumers received, all together",
    "queue_depth": "messages CBUS holds queued right now, all CPUs",
    "drop": "messages the kernel counted as dropped since the load began (CBUS and direct sends)",
    "gap": "messages the consumers saw missing (sequence gaps), all together",
    "enobufs": "ENOBUFS errors the consumers' sockets reported, all together",
}


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
        raise PluginError(f"emulator {name!r}: hard-IRQ generators need the cbus path (a direct send is not "
                          "hard-IRQ safe)")
    lo, hi = out.get("size_min", 32), out.get("size_max", out.get("size_min", 32))
    if not 32 <= lo <= hi <= kabi.CNLAB_PAYLOAD_MAX:
        raise PluginError(f"emulator {name!r}: sizes must satisfy 32 <= size_min <= size_max <= "
                          f"{kabi.CNLAB_PAYLOAD_MAX}, got size_min {lo}, size_max {hi}")
    for key, top in (("rate", kabi.CNLAB_RATE_MAX), ("burst", kabi.CNLAB_BURST_MAX), ("count", kabi.CNLAB_COUNT_MAX),
                     ("duration_ns", kabi.CNLAB_DURATION_MAX_NS)):
        value = out.get(key, 0)
        if not isinstance(value, int) or not 0 <= value <= top:
            raise PluginError(f"emulator {name!r}: GEN_START {key} = {value!r} is outside 0..{top}")
    if out.get("flags", 0) & kabi.CNLAB_GEN_F_BURSTS:
        _check_bursts(name, out.get("rate", 0), out.get("burst", 0), hi, context)
    out.update(context=context, path=path, size_min=lo, size_max=hi)
    return out


def _check_bursts(name: str, rate: int, burst: int, size_max: int, context: str) -> None:
    """The module's limits of burst mode (docs/kmod.md), checked before any guest boots."""
    problems = []
    if not 1 <= rate <= kabi.CNLAB_BURST_RATE_MAX:
        problems.append(f"rate {rate} bursts/s is outside 1..{kabi.CNLAB_BURST_RATE_MAX}")
    if not 1 <= burst <= kabi.CNLAB_BURST_MAX:
        problems.append(f"burst {burst} is outside 1..{kabi.CNLAB_BURST_MAX}")
    elif burst * rate > kabi.CNLAB_BURST_MSGS_PER_S_MAX:
        problems.append(f"burst x rate = {burst * rate} messages/s is above {kabi.CNLAB_BURST_MSGS_PER_S_MAX}")
    if burst * size_max > kabi.CNLAB_BURST_BYTES_MAX:
        problems.append(f"burst x largest payload = {burst * size_max} bytes is above {kabi.CNLAB_BURST_BYTES_MAX}")
    elif burst * size_max * rate > kabi.CNLAB_BURST_BYTES_PER_S_MAX:
        problems.append(f"burst x largest payload x rate = {burst * size_max * rate} bytes/s is above "
                        f"{kabi.CNLAB_BURST_BYTES_PER_S_MAX}")
    if problems:
        raise PluginError(f"emulator {name!r}: bursts: " + "; ".join(problems))


@dataclass(frozen=True)
class GeneratorProfile:
    """An emulated subsystem: GEN_START configs sharing one connector id and group.

    :param name: the emulator's name (for messages).
    :param idx: connector idx (even; 0: the engine picks a free even one); :param val: connector val;
        :param group: netlink group.
    :param generators: GEN_START fields per generator (see :data:`GEN_FIELDS`); ``context`` and ``path`` by
        name.  A generator with neither ``count`` nor ``duration_ns`` runs for the scenario's duration.
    """

    name: str
    idx: int
    val: int
    group: int
    generators: tuple[Mapping[str, Any], ...]

    def __post_init__(self) -> None:
        if not self.generators:
            raise PluginError(f"emulator {self.name!r}: no generators")
        if self.idx % 2:
            raise PluginError(f"emulator {self.name!r}: idx {self.idx:#x} is odd (odd groups are open to "
                              "non-root on 6.6+; use an even idx)")
        object.__setattr__(self, "generators", tuple(_check_gen(self.name, g) for g in self.generators))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "generators", "name": self.name, "idx": self.idx, "val": self.val, "group": self.group,
                "generators": [dict(g) for g in self.generators]}


@dataclass(frozen=True)
class LiveSource:
    """A real kernel connector source and the guest program that drives it.

    :param name: emulator name; :param idx:, :param val:, :param group: the kernel's connector id and group.
    :param driver: guest argv that makes the kernel produce traffic (e.g. a process storm); it runs while the
        load runs and prints one JSON line.
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
    """A consumer: a guest program and its options (``docs/guest-contract.md``).

    :param name: consumer name; :param program: file name under the guest plugin folder.
    :param options: ``--key value`` options (``True`` is a bare flag, ``False``/None omitted).
    :param instances: how many copies to run side by side.
    :param program: a file in the guest plugin folder, or a path in the guest when it starts with ``/``.
    :param protocol: ``checker``: the program takes ``--groups/--name/--out``, creates ``OUT.ready`` once bound,
        may keep ``OUT.live`` counters, runs until SIGTERM and writes its JSON report to ``OUT``; ``oneshot``:
        it runs to completion on its own options and prints one JSON line on stdout.
    :param interpreter: what runs the program (``python3``; empty or None for a native executable).
    :param start: ``exec``: a new process runs the program; ``fork``: the guest agent forks itself and runs
        the Python program in the child, with no new interpreter (about a second less under TCG).  Only for
        programs that need nothing but the standard library and ``kabi`` (the child has the agent's modules
        and ``sys.path``, without site-packages); a restarted consumer is always exec'd.
    """

    name: str
    program: str
    options: Mapping[str, Any] = field(default_factory=dict)
    instances: int = 1
    protocol: str = "checker"
    interpreter: str | None = "python3"
    start: str = "exec"

    def __post_init__(self) -> None:
        if self.protocol not in ("checker", "oneshot"):
            raise PluginError(f"consumer {self.name!r}: protocol {self.protocol!r} is not checker or oneshot")
        if self.start not in ("exec", "fork"):
            raise PluginError(f"consumer {self.name!r}: start {self.start!r} is not exec or fork")
        if self.start == "fork" and (self.interpreter != "python3" or not self.program.endswith(".py")):
            raise PluginError(f"consumer {self.name!r}: start = 'fork' is for Python programs run by python3")
        if not 1 <= self.instances <= 64:
            raise PluginError(f"consumer {self.name!r}: instances {self.instances} is outside 1..64")

    def argv(self, folder: str) -> list[str]:
        """The command line, program first (``folder`` is where plugin files live in the guest)."""
        program = self.program if self.program.startswith("/") else f"{folder}/{self.program}"
        out = ([self.interpreter] if self.interpreter else []) + [program]
        for key, value in sorted(self.options.items()):
            if value is None or value is False:
                continue
            out.append("--" + key.replace("_", "-"))
            if value is not True:
                out.append(str(value))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"kind": "program", "name": self.name, "program": self.program, "options": dict(self.options),
                "instances": self.instances, "protocol": self.protocol, "start": self.start,
                "interpreter": self.interpreter}


# ------------------------------------------------------------------ faults
@dataclass(frozen=True)
class Action:
    """One step of a fault; make them with the functions below.

    :param kind: one of :data:`GUEST_ACTIONS` or :data:`HOST_ACTIONS`.
    :param args: the step's arguments (JSON-friendly).
    """

    kind: str
    args: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in GUEST_ACTIONS + HOST_ACTIONS:
            raise PluginError(f"fault action {self.kind!r} is not one of {GUEST_ACTIONS + HOST_ACTIONS}")

    @property
    def host_side(self) -> bool:
        return self.kind in HOST_ACTIONS

    @property
    def evidence(self) -> bool:
        """A check that the fault took effect, not a step of it."""
        return self.kind in ("expect", "expect-qmp")

    def describe(self) -> str:
        """One line for plans and logs (``write /sys/.../online 0``)."""
        return " ".join([self.kind, *(str(a) for a in self.args)])

    def to_json(self) -> list[Any]:
        return [self.kind, *self.args]


def write_file(path: str, text: str) -> Action:
    """Write ``text`` to a guest file (sysfs, procfs, ``/proc/sys``): the write's error fails the injection."""
    if not path.startswith("/"):
        raise PluginError(f"write_file: path {path!r} is not absolute")
    return Action("write", (path, str(text)))


def module_knob(name: str, value: int | None) -> Action:
    """Set one of the module's fault knobs (:data:`KNOBS`) through its control socket.

    ``value`` None sets the knob back to the module's default (its parameter of the same name, or 0).
    """
    if name not in KNOBS:
        raise PluginError(f"module_knob: {name!r} is not one of {sorted(KNOBS)}")
    return Action("knob", (name, value))


def cpu_online(cpu: int, online: bool) -> Action:
    """Take a guest CPU offline or bring it back; the agent brings every CPU back when the load ends."""
    if cpu < 1:
        raise PluginError(f"cpu_online: CPU {cpu}: CPU 0 cannot go offline")
    return Action("cpu", (int(cpu), bool(online)))


def run(*argv: str) -> Action:
    """Run a guest command to completion (an argument list, never a shell string); a non-zero exit fails."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise PluginError(f"run: expected an argument list of strings, got {argv!r}")
    return Action("exec", tuple(argv))


def spawn(*argv: str) -> Action:
    """Start a guest command in the background; the fault's restore (or the load's end) kills it."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise PluginError(f"spawn: expected an argument list of strings, got {argv!r}")
    return Action("spawn", tuple(argv))


def signal_consumers(signal_name: str = "KILL") -> Action:
    """Send a signal to every consumer process of the scenario (a killed one is restarted once)."""
    if signal_name not in ("KILL", "TERM", "STOP", "CONT", "INT"):
        raise PluginError(f"signal_consumers: signal {signal_name!r} is not KILL, TERM, STOP, CONT or INT")
    return Action("signal", ("consumers", signal_name))


def qmp(command: str, **arguments: Any) -> Action:
    """A QMP command to the guest's QEMU, run on the host (``stop``, ``cont``...)."""
    return Action("qmp", (command, dict(arguments)) if arguments else (command,))


def expect_file(path: str, text: str) -> Action:
    """Evidence: the guest file reads ``text`` (stripped) once the fault fired (``/sys/.../cpu1/online`` is 0)."""
    if not path.startswith("/"):
        raise PluginError(f"expect_file: path {path!r} is not absolute")
    return Action("expect", ("file", path, str(text)))


def expect_absent(path: str) -> Action:
    """Evidence: the guest path no longer exists (``/sys/module/cnlab`` after an unload)."""
    if not path.startswith("/"):
        raise PluginError(f"expect_absent: path {path!r} is not absolute")
    return Action("expect", ("absent", path))


def expect_knob(name: str, value: int | None) -> Action:
    """Evidence: the module reports the knob at ``value`` (read back with STATS; None: its default)."""
    if name not in KNOBS or name == "warn":
        raise PluginError(f"expect_knob: {name!r} is not one of stall_ms, alloc_nth, queue_limit")
    return Action("expect", ("knob", name, value))


def expect_output(needle: str, *argv: str) -> Action:
    """Evidence: a guest command (argv list) prints ``needle`` (``tc qdisc show dev eth0`` shows netem)."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise PluginError(f"expect_output: expected an argument list of strings, got {argv!r}")
    return Action("expect", ("output", needle, *argv))


def expect_consumers_gone() -> Action:
    """Evidence: none of the consumer processes a signal was sent to is alive any more."""
    return Action("expect", ("consumers-gone",))


def expect_spawned_running() -> Action:
    """Evidence: every program the firing spawned is running."""
    return Action("expect", ("spawned-running",))


def expect_qmp_status(status: str) -> Action:
    """Host-side evidence: QMP ``query-status`` says ``status`` (``paused`` after ``stop``)."""
    return Action("expect-qmp", (status,))


@dataclass(frozen=True)
class Fault:
    """A fault: actions that inject it, evidence that it took effect, and actions that undo it.

    :param inject: actions run, in order, when the fault fires.
    :param restore: actions run, in order, ``duration`` seconds later (or when the load ends).
    :param summary: one line for results (``cpu1 offline``).
    :param evidence: ``expect_*`` checks, polled (up to 2 s x the accelerator's timeout scale) right after
        the inject actions: until each holds, the fault has not taken effect, and a firing whose evidence
        never holds fails its scenario ("fired without effect").

    All actions are guest-side or all host-side (:data:`HOST_ACTIONS`), never mixed.
    """

    inject: tuple[Action, ...]
    restore: tuple[Action, ...] = ()
    summary: str = ""
    evidence: tuple[Action, ...] = ()

    def __post_init__(self) -> None:
        actions = self.inject + self.restore + self.evidence
        if not self.inject:
            raise PluginError("a fault needs at least one inject action")
        if not all(isinstance(a, Action) for a in actions):
            raise PluginError("fault actions must be lab.plugin.objects.Action (write_file, run, qmp...)")
        if len({a.host_side for a in actions}) > 1:
            raise PluginError("a fault's actions are all guest-side or all host-side (qmp), not mixed")
        if any(a.evidence for a in self.inject + self.restore) or not all(a.evidence for a in self.evidence):
            raise PluginError("expect_* actions go in a fault's evidence, and only they do")

    @property
    def side(self) -> str:
        """``guest`` or ``host``."""
        return "host" if self.inject[0].host_side else "guest"

    def to_json(self) -> dict[str, Any]:
        return {"inject": [a.to_json() for a in self.inject], "restore": [a.to_json() for a in self.restore],
                "evidence": [a.to_json() for a in self.evidence], "summary": self.summary, "side": self.side}


# ------------------------------------------------------------------ events
@dataclass(frozen=True)
class AgentCounter:
    """An event the guest agent counts itself (:data:`AGENT_EVENTS`)."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in AGENT_EVENTS:
            raise PluginError(f"agent event {self.name!r} is not one of {sorted(AGENT_EVENTS)}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": "agent", "name": self.name}


@dataclass(frozen=True)
class FileCounter:
    """An event counted from a guest file: the first integer matching ``pattern`` (its first group).

    :param path: absolute guest path (``/proc/vmstat``, a sysfs or debugfs counter).
    :param pattern: a regular expression with one group around the number.
    :param relative: count the increase since the load began (else the value itself).
    """

    path: str
    pattern: str = r"(-?\d+)"
    relative: bool = True

    def __post_init__(self) -> None:
        import re

        if not self.path.startswith("/"):
            raise PluginError(f"FileCounter: path {self.path!r} is not absolute")
        try:
            if re.compile(self.pattern).groups < 1:
                raise PluginError(f"FileCounter: pattern {self.pattern!r} has no group around the number")
        except re.error as exc:
            raise PluginError(f"FileCounter: pattern {self.pattern!r}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {"kind": "file", "path": self.path, "pattern": self.pattern, "relative": self.relative}


def actions_from_json(items: Sequence[Sequence[Any]]) -> tuple[Action, ...]:
    """The inverse of ``Action.to_json`` for a list of actions."""
    return tuple(Action(item[0], tuple(item[1:])) for item in items)
