"""Faults inside the guest agent: their actions, their triggers, and a record of every firing.

A fault in the plan is a list of inject actions, a list of restore actions,
a trigger (``at``, ``every`` or ``on`` an event with a threshold) and a
duration.  :class:`FaultScheduler` fires each one on time, or once its
event's count reaches the threshold (events are polled every
``EVENT_POLL_S``: the kernel and the consumers announce nothing), runs the
actions in this process (no program starts per injection, except for ``exec``
actions) and undoes them ``duration`` seconds later, or when the load ends.

Host-side faults (QMP) are announced on stderr as ``CNLAB-HOST-FAULT {json}``
lines; the orchestrator carries them out and undoes them itself (a paused
guest cannot ask to be resumed).

Each firing and each undo runs in a thread of its own, so a program that
runs for seconds holds back no other fault; the threads (not the programs
they start) run SCHED_FIFO.  ``spawn`` programs end when their fault is
undone (an exit status other than 0 before that fails the firing).

Every firing leaves a record: label, trigger, ``due`` (when it was planned,
or when its event was seen), ``start`` and ``end`` of the inject actions,
``restored``, each action's outcome, ``ok``.  Times are seconds from the
start of the load (the generators' start).  Standard library only.
"""

import heapq
import json
import os
import signal
import subprocess
import sys
import threading
import time

import kabi

EVENT_POLL_S = 0.02
#: The fault thread runs SCHED_FIFO at this priority (it sleeps between firings).
FIFO_PRIORITY = 10
KNOBS = {"stall_ms": kabi.CNLAB_FAULT_STALL_MS, "alloc_nth": kabi.CNLAB_FAULT_ALLOC_NTH,
         "queue_limit": kabi.CNLAB_FAULT_QLIMIT, "warn": kabi.CNLAB_FAULT_WARN,
         "panic": kabi.CNLAB_FAULT_PANIC}
MODULE_PARAMS = "/sys/module/cnlab/parameters"


#: STATS reply fields that read a knob back.
STATS_FIELDS = {"stall_ms": "stall_ms", "alloc_nth": "alloc_fail_nth", "queue_limit": "queue_limit"}


def process_alive(pid):
    """True while ``pid`` runs (a zombie, dead but not reaped yet, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def knob_default(name):
    """The module's default for a knob: its module parameter of that name if there is one, else 0."""
    try:
        with open(f"{MODULE_PARAMS}/{name}") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def cpu_path(cpu):
    return f"/sys/devices/system/cpu/cpu{cpu}/online"


class Actions:
    """Carries out fault actions and remembers what must be undone when the load ends.

    :param client: a ``kabi.CtlClient`` (module knobs); shared, so calls are serialised here.
    :param signal_consumers: ``signal_consumers(signum)`` sends a signal to every consumer process.
    :param folder: where spawned programs' output goes.
    """

    def __init__(self, client, signal_consumers, folder):
        self.client = client
        self.lock = threading.Lock()
        self.signal_consumers = signal_consumers
        self.folder = folder
        self.offline = set()
        self.spawned = []
        self.signalled = []  # the consumer pids the last signal action reached
        self.defaults = {name: knob_default(name) for name in ("queue_limit",)}

    def run(self, action):
        """One action; ``{"action", "ok", "error"?}``, never raises."""
        kind, args = action[0], action[1:]
        out = {"action": " ".join(str(a) for a in action), "ok": True}
        try:
            if kind == "write":
                with open(args[0], "w") as f:
                    f.write(str(args[1]))
            elif kind == "mkdir":  # a folder that is there already is made
                try:
                    os.mkdir(args[0])
                except FileExistsError:
                    if not os.path.isdir(args[0]):
                        raise
            elif kind == "rmdir":  # a folder that is not there is already removed
                if os.path.isdir(args[0]):
                    os.rmdir(args[0])
            elif kind == "read":
                with open(args[0]) as f:
                    out["value"] = f.read().strip()
            elif kind == "knob":
                name, value = args
                if value is None:
                    value = self.defaults.get(name, 0)
                with self.lock:
                    reply = self.client.fault(KNOBS[name], int(value))
                if not reply.ok:
                    raise OSError(f"SET_FAULT {name}={value} refused: {reply.error_name}")
            elif kind == "cpu":
                cpu, online = args
                with open(cpu_path(cpu), "w") as f:
                    f.write("1" if online else "0")
                (self.offline.discard if online else self.offline.add)(cpu)
            elif kind == "exec":
                proc = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
                if proc.returncode:
                    raise OSError(f"exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
            elif kind == "spawn":
                path = os.path.join(self.folder, f"spawn-{len(self.spawned)}.log")
                with open(path, "w") as log:
                    proc = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
                proc.log_path = path
                self.spawned.append(proc)
                out["spawned"] = proc
            elif kind == "signal":
                self.signalled = list(self.signal_consumers(getattr(signal, "SIG" + args[1])) or ())
            else:
                raise OSError(f"unknown action {kind!r}")
        except (OSError, ValueError, TimeoutError, subprocess.SubprocessError) as exc:
            out.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        return out

    def check(self, action, spawned=()):
        """One piece of evidence (an ``expect`` action): ``(held, what was seen)``, never raises."""
        what, args = action[1], action[2:]
        try:
            if what == "file":
                with open(args[0]) as f:
                    seen = f.read().strip()
                return seen == str(args[1]), f"{args[0]} reads {seen!r}"
            if what == "absent":
                return not os.path.exists(args[0]), f"{args[0]} {'exists' if os.path.exists(args[0]) else 'gone'}"
            if what == "knob":
                name, want = args
                if want is None:
                    want = self.defaults.get(name, 0)
                with self.lock:
                    body = self.client.stats().body
                seen = body[STATS_FIELDS[name]]
                return seen == int(want), f"module reports {name} {seen}"
            if what == "output":
                needle, argv = args[0], list(args[1:])
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                return needle in proc.stdout, f"{' '.join(argv)} printed {proc.stdout.strip()[-120:]!r}"
            if what == "consumers-gone":
                alive = [pid for pid in self.signalled if process_alive(pid)]
                return bool(self.signalled) and not alive, (f"still alive: {alive}" if alive else
                                                           f"{len(self.signalled)} consumer process(es) gone")
            if what == "spawned-running":
                running = [p for p in spawned if p.poll() is None]
                return bool(spawned) and len(running) == len(spawned), f"{len(running)} of {len(spawned)} running"
            return False, f"unknown evidence {what!r}"
        except (OSError, ValueError, KeyError, TimeoutError, subprocess.SubprocessError) as exc:
            return False, f"{type(exc).__name__}: {exc}"

    def stop_spawned(self, proc):
        """End one spawned program (its process group); ``{"action", "ok", "error"?}`` says how it had ended:
        still running is fine, an exit status other than 0 before its restore is a failure."""
        out = {"action": f"stop {' '.join(proc.args)}", "ok": True}
        status = proc.poll()
        if status is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
        elif status != 0:
            try:
                with open(proc.log_path) as f:
                    tail = f.read()[-300:].strip()
            except OSError:
                tail = ""
            out.update(ok=False, error=f"the spawned program exited {status} before its fault was undone: {tail}")
        if proc in self.spawned:
            self.spawned.remove(proc)
        return out

    def kill_spawned(self):
        for proc in list(self.spawned):
            self.stop_spawned(proc)

    def finish(self):
        """Every CPU a fault took offline back online, every spawned program gone."""
        for cpu in sorted(self.offline):
            self.run(["cpu", cpu, True])
        self.kill_spawned()


class FaultScheduler(threading.Thread):
    """Fires the plan's faults on their triggers while the load runs.

    :param faults: the plan's fault entries.
    :param actions: an :class:`Actions`.
    :param probes: event name -> function returning the event's count now.
    :param duration: the scenario's load duration (``every`` stops there).
    """

    def __init__(self, faults, actions, probes, duration, evidence_s=2.0):
        super().__init__(name="faults", daemon=True)
        self.evidence_s = evidence_s
        self.faults = faults
        self.actions = actions
        self.probes = probes
        self.duration = duration
        self.t0 = None
        self.halt = threading.Event()
        self.records = []
        self.heap = []
        self.seq = 0
        self.waiting = [f for f in faults if f["trigger"]["on"]]
        self.lock = threading.Lock()
        self.probe_errors = {}
        self.active = 0  # firings or undos being carried out (a firing's restore is planned when it ends)
        self.wake = threading.Event()
        self.workers = []

    def now(self):
        return time.monotonic() - self.t0

    def _push(self, due, step, fault, record=None):
        with self.lock:
            self.seq += 1
            heapq.heappush(self.heap, (due, self.seq, step, fault, record))
        self.wake.set()

    def _dispatch(self, work, *args):
        """Carry out one firing or undo in a thread of its own: a slow action (a program that runs for
        seconds) holds back no other fault."""
        with self.lock:
            self.active += 1

        def run():
            realtime()
            try:
                work(*args)
            finally:
                with self.lock:
                    self.active -= 1
                self.wake.set()

        thread = threading.Thread(target=run, name="fault-work", daemon=True)
        self.workers.append(thread)
        thread.start()

    def fire_before_load(self):
        """Faults ``at = 0``: injected before the consumers start (their times are then negative)."""
        self.t0 = time.monotonic()
        for fault in self.faults:
            if fault["trigger"]["at"] == 0:
                self._fire(fault, 0.0)
                self.records[-1]["before_load"] = True

    def start_load(self, t0):
        """The generators started at ``t0`` (monotonic): plan the timed faults, then watch."""
        for record in self.records:  # re-base the faults fired before the load on the load's clock
            for key in ("start", "end"):
                if record.get(key) is not None:
                    record[key] = round(record[key] - (t0 - self.t0), 4)
        self.t0 = t0
        for fault in self.faults:
            trigger = fault["trigger"]
            if trigger["at"]:
                self._push(trigger["at"], "inject", fault)
            elif trigger["every"]:
                t = trigger["every"]
                while t < self.duration - 1e-9:
                    self._push(t, "inject", fault)
                    t += trigger["every"]
        self.start()

    def _fire(self, fault, due, seen=None):
        record = {"label": fault["label"], "name": fault["name"], "side": fault["side"],
                  "trigger": fault["trigger"]["text"], "due": round(due, 4), "start": None, "end": None,
                  "restored": None, "ok": True, "actions": [], "summary": fault.get("summary", "")}
        if seen is not None:
            record["seen"] = seen
        with self.lock:
            self.records.append(record)
        record["start"] = round(self.now(), 4)
        if fault["side"] == "host":
            host_request({"label": fault["label"], "n": len(self.records), "due": due, "t": record["start"],
                          "inject": fault["inject"], "restore": fault["restore"],
                          "evidence": fault.get("evidence", []), "duration": fault["duration"]})
            record["end"] = record["start"]
            record["requested"] = True
            return
        for action in fault["inject"]:
            outcome = self.actions.run(action)
            if "spawned" in outcome:
                record.setdefault("_spawned", []).append(outcome.pop("spawned"))
            record["actions"].append(outcome)
            if not outcome["ok"]:
                record["ok"] = False
                break
        if record["ok"] and fault.get("evidence"):
            self._evidence(fault, record)
        record["end"] = round(self.now(), 4)
        if (fault["restore"] or record.get("_spawned")) and fault["duration"] > 0:
            self._push(record["start"] + fault["duration"], "restore", fault, record)

    def _evidence(self, fault, record):
        """Poll the fault's evidence until all of it holds or ``evidence_s`` passes; a firing whose
        evidence never holds failed ("fired without effect")."""
        deadline = time.monotonic() + self.evidence_s
        while True:
            results = [(a, *self.actions.check(a, record.get("_spawned", ()))) for a in fault["evidence"]]
            if all(held for _, held, _ in results) or time.monotonic() >= deadline:
                break
            time.sleep(0.01)  # sysfs and the module's state announce nothing
        for action, held, seen in results:
            record["actions"].append({"action": " ".join(str(a) for a in action), "ok": held, "evidence": True,
                                      **({} if held else {"error": f"fired without effect: {seen}"}),
                                      "seen": seen})
            if not held:
                record["ok"] = False
        record["evidence_s"] = round(self.evidence_s - max(0.0, deadline - time.monotonic()), 3)

    def _restore(self, fault, record):
        if record["restored"] is not None or fault["side"] == "host":
            return
        for proc in record.pop("_spawned", []):
            outcome = self.actions.stop_spawned(proc)
            outcome["restore"] = True
            record["actions"].append(outcome)
            if not outcome["ok"]:
                record["ok"] = False
        for action in fault["restore"]:
            outcome = self.actions.run(action)
            outcome["restore"] = True
            record["actions"].append(outcome)
            if not outcome["ok"]:
                record["ok"] = False
        record["restored"] = round(self.now(), 4)

    def busy(self):
        """A timed firing or an undo is under way or still to come: the load lasts until the last one is done."""
        with self.lock:
            return self.active > 0 or bool(self.heap)

    def _poll_events(self):
        counts = {}
        for fault in list(self.waiting):
            name = fault["trigger"]["on"]
            if name not in counts:
                try:
                    counts[name] = self.probes[name]()
                except (OSError, TimeoutError, ValueError, KeyError) as exc:
                    self.probe_errors[name] = f"{type(exc).__name__}: {exc}"
                    counts[name] = None
            if counts[name] is not None and counts[name] >= fault["trigger"]["threshold"]:
                self.waiting.remove(fault)
                seen = self.now()
                self._dispatch(self._fire, fault, seen, {"count": counts[name]})

    def _due(self, now):
        """The timed steps due at ``now``, taken off the plan."""
        due = []
        with self.lock:
            while self.heap and self.heap[0][0] <= now:
                due.append(heapq.heappop(self.heap))
        return due

    def run(self):
        realtime()
        next_poll = 0.0
        while not self.halt.is_set():
            self.wake.clear()
            now = self.now()
            for due, _, step, fault, record in self._due(now):
                if step == "inject":
                    self._dispatch(self._fire, fault, due)
                else:
                    self._dispatch(self._restore, fault, record)
            if self.waiting and now >= next_poll:
                self._poll_events()
                next_poll = now + EVENT_POLL_S
            wake = [next_poll] if self.waiting else []
            with self.lock:
                if self.heap:
                    wake.append(self.heap[0][0])
            self.wake.wait(max(0.0, min(wake) - self.now()) if wake else 0.5)

    def finish(self):
        """Stop firing; undo every fault not undone yet, newest first; CPUs online, spawned programs gone."""
        self.halt.set()
        self.wake.set()
        if self.is_alive():
            self.join(60)
        for thread in self.workers:
            thread.join(150)  # an exec action has 120 s at most
        by_label = {f["label"]: f for f in self.faults}
        for record in reversed(self.records):
            fault = by_label[record["label"]]
            if (fault["restore"] or record.get("_spawned")) and record["start"] is not None:
                self._restore(fault, record)
        self.actions.finish()
        never = [f"fault {f['label']} ({f['trigger']['text']}): the event never happened"
                 + (f" (probe failed: {self.probe_errors[f['trigger']['on']]})"
                    if f["trigger"]["on"] in self.probe_errors else "")
                 for f in self.waiting]
        return self.records, never


def realtime():
    """This thread runs SCHED_FIFO, so faults fire on time even when the load keeps every CPU busy; the
    programs it starts do not inherit it (SCHED_RESET_ON_FORK)."""
    try:
        policy = os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0)
        os.sched_setscheduler(threading.get_native_id(), policy, os.sched_param(FIFO_PRIORITY))
    except (OSError, AttributeError):
        pass


def host_request(request):
    """Ask the orchestrator to carry out a host-side fault (one line on stderr, read as it comes)."""
    sys.stderr.write("CNLAB-HOST-FAULT " + json.dumps(request) + "\n")
    sys.stderr.flush()
